"""LoRA and new-tag rows on UnifiedVoice through peft; adapters in PEFT's own format; merging to official keys.

What trains in ``lora`` mode (everything else is frozen and stays bit-identical):

* LoRA on the GPT-2 blocks' Conv1D layers (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``).
* The new tag rows of ``text_embedding`` via peft's ``trainable_token_indices`` (dict form: the list form
  looks for ``embed_tokens``).
* The new rows of ``text_head``, weight AND bias. peft's trainable tokens on an untied Linear drop its bias,
  so the head is a ``modules_to_save`` copy whose old rows get a zero gradient (and no weight decay, which
  would otherwise move every row).
* Optionally the conditioning encoder and perceiver (and IndexTTS-2's emotion branch), also as
  ``modules_to_save`` copies.

An adapter folder is what ``PeftModel.save_pretrained`` would write (keys under ``base_model.model.``,
``base_model_name_or_path`` set) plus tagtune's own ``tagtune_adapter.json`` and a model card; folders
written before the prefix existed still load. ``grow_for_adapter`` gives a plain base (the official
``UnifiedVoice`` too) the adapter's text rows, so that stock ``PeftModel.from_pretrained`` loads it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from tagtune.atomic import atomic_write_bytes, atomic_write_text
from tagtune.checkpoint import CheckpointError, read_state_dict, save_safetensors
from tagtune.errors import UserError
from tagtune.folders import ADAPTER_CARD_FILE, ADAPTER_CONFIG_FILE, ADAPTER_META_FILE, ADAPTER_WEIGHTS_FILE

DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
MODES = ("lora", "full")
ADAPTER = "default"
CONDITIONING_MODULES = ("conditioning_encoder", "perceiver_encoder")
# (branch suffix, module): the conformers' input subsampling, frozen even when the conditioning trains
CONDITIONING_FRONT = ("conditioning_encoder", "embed")
# IndexTTS-2's emotion branch: trains with the speaker branch (``train_conditioning``), frozen otherwise
EMOTION_MODULES = ("emo_conditioning_encoder", "emo_perceiver_encoder", "emovec_layer", "emo_layer")
# peft wrapper names that appear inside state-dict keys and are not part of the official layout
WRAPPER_PARTS = ("base_layer", "token_adapter", "original_module")
SAVED_COPY = "modules_to_save." + ADAPTER
ADAPTER_MARKERS = ("lora_", "trainable_tokens_", "lora_magnitude_vector")
PEFT_PREFIX = "base_model.model."  # where PeftModel keeps the wrapped model: its saved keys start with it


class LoraError(UserError, ValueError):
    """A LoRA setting (``setting``, a LoraSpec field) that does not fit the model; ``detail`` says why."""

    def __init__(self, setting: str, detail: str):
        self.setting, self.detail = setting, detail
        super().__init__(f"LoRA {setting} {detail}")


@dataclass(frozen=True)
class LoraSpec:
    """What trains: LoRA on the GPT-2 blocks (``mode="lora"``) or every GPT weight (``mode="full"``).

    Plain values, so that any caller (the training recipe, a notebook, a test) can build one.
    """

    mode: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None  # block indices; None = every block
    train_conditioning: bool = False  # conditioning encoder + perceiver, and v2's emotion branch (frozen by default)


def conditioning_modules(gpt: nn.Module) -> tuple[str, ...]:
    """The conditioning branches ``gpt`` has: the speaker branch, and on IndexTTS-2 the emotion branch too."""
    return tuple(name for name in CONDITIONING_MODULES + EMOTION_MODULES if hasattr(gpt, name))


def lora_config(settings: LoraSpec, new_token_ids: list[int],
                conditioning: tuple[str, ...] = CONDITIONING_MODULES) -> LoraConfig:
    """The peft config for ``settings`` with ``new_token_ids`` as the trainable text rows; ``conditioning``
    names the branches that train with ``train_conditioning`` (``conditioning_modules`` of the GPT)."""
    to_save = ["text_head"] + (list(conditioning) if settings.train_conditioning else [])
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        layers_to_transform=list(settings.layers) if settings.layers is not None else None,
        layers_pattern="h" if settings.layers is not None else None,
        fan_in_fan_out=True,  # GPT-2 Conv1D stores weights (in, out)
        trainable_token_indices={"text_embedding": list(new_token_ids)},
        modules_to_save=to_save,
        bias="none",
    )


def apply_lora(gpt: nn.Module, settings: LoraSpec, new_token_ids: list[int]) -> nn.Module:
    """Make ``gpt`` trainable as ``settings`` says (in place) and return it.

    ``lora`` mode injects adapters; ``full`` mode unfreezes the GPT (blocks, embeddings, heads) and, when
    ``train_conditioning`` is set, the conditioning encoder and perceiver (and IndexTTS-2's emotion branch), all
    but the encoders' input subsampling.
    Either way only the new rows of ``text_head`` (weight and bias) receive gradient in lora mode.
    """
    gpt.requires_grad_(False)
    conditioning = conditioning_modules(gpt)
    if settings.mode == "full":
        for name, p in gpt.named_parameters():
            p.requires_grad_(settings.train_conditioning or not name.startswith(conditioning))
        _freeze_input_subsampling(gpt)
        return gpt
    check_fits(gpt, settings)
    inject_adapter_in_model(lora_config(settings, new_token_ids, conditioning), gpt, adapter_name=ADAPTER)
    _mask_old_head_rows(gpt, new_token_ids)
    _freeze_input_subsampling(gpt)
    return gpt


def _freeze_input_subsampling(gpt: nn.Module) -> None:
    """Keep the conditioning encoders' input subsampling (the conv front, ``*conditioning_encoder.embed``) frozen
    when the branches train: a fixed feature extractor that costs more to run and differentiate than the layers
    above it, and whose output training can then compute once per clip (``train.data.precompute_frames``)."""
    for name, p in gpt.named_parameters():
        branch, _, rest = name.partition(".")
        if branch.endswith(CONDITIONING_FRONT[0]) and f".{CONDITIONING_FRONT[1]}." in f".{rest}":
            p.requires_grad_(False)


def check_fits(gpt: nn.Module, settings: LoraSpec) -> None:
    """Raise LoraError when ``settings`` names blocks or layers the GPT does not have."""
    blocks = gpt.gpt.h
    bad = [i for i in settings.layers or () if i >= len(blocks)]
    if bad:
        raise LoraError("layers", f"{bad} out of range: the model has {len(blocks)} blocks (0-{len(blocks) - 1})")
    names = adaptable_layers(blocks[0])
    unknown = [t for t in settings.targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise LoraError("targets", f"{unknown} name no layer of the GPT-2 blocks; the blocks have {', '.join(names)}")


def adaptable_layers(block: nn.Module) -> list[str]:
    """Names (inside one block) of the layers LoRA can wrap: GPT-2's Conv1D and plain Linear layers."""
    return [n for n, m in block.named_modules() if isinstance(m, (Conv1D, nn.Linear))]


def _mask_old_head_rows(gpt: nn.Module, new_token_ids: list[int]) -> None:
    """Zero the gradient of every text_head row except the new ones, so Adam never moves them."""
    head = trainable_head(gpt)
    keep = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)
    keep[list(new_token_ids)] = 1.0  # (V,)
    head.weight.register_hook(lambda g: g * keep[:, None].to(g.dtype))
    head.bias.register_hook(lambda g: g * keep.to(g.dtype))


def trainable_head(gpt: nn.Module) -> nn.Linear:
    """The text_head that forward uses: the peft copy when wrapped, the module itself otherwise."""
    head = gpt.text_head
    return head.modules_to_save[ADAPTER] if hasattr(head, "modules_to_save") else head


def param_groups(gpt: nn.Module, lr: float, weight_decay: float, tag_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: adapters (lr, weight decay) and tag rows (lr x tag_lr_scale, no weight decay)."""
    tag_ids = {id(p) for p in _tag_row_params(gpt)}
    main, tags = [], []
    for p in gpt.parameters():
        if p.requires_grad:
            (tags if id(p) in tag_ids else main).append(p)
    groups = [{"params": main, "lr": lr, "weight_decay": weight_decay, "name": "adapters"}]
    if tags:
        groups.append({"params": tags, "lr": lr * tag_lr_scale, "weight_decay": 0.0, "name": "tag_rows"})
    return groups


def _tag_row_params(gpt: nn.Module) -> list[nn.Parameter]:
    if not hasattr(gpt.text_head, "modules_to_save"):
        return []  # full fine-tuning: text rows are ordinary weights
    head = trainable_head(gpt)
    layer = gpt.text_embedding.token_adapter
    return [head.weight, head.bias, layer.trainable_tokens_delta[ADAPTER]]


def trainable_state(gpt: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by its (wrapped) name: what a resumable checkpoint stores."""
    return {n: p.detach().clone() for n, p in gpt.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------- merging


def official_key(key: str) -> str | None:
    """Map a wrapped state-dict key to the official one; None for adapter-only tensors."""
    if any(m in key for m in ADAPTER_MARKERS) or ".original_module." in key:
        return None
    key = key.replace(f".{SAVED_COPY}.", ".")
    for part in WRAPPER_PARTS:
        key = key.replace(f".{part}.", ".")
    return key


@torch.no_grad()
def merge(gpt: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict in the official layout with adapters folded in (``gpt`` is not modified)."""
    merged = {}
    for key, t in gpt.state_dict().items():
        name = official_key(key)
        if name is not None:
            merged[name] = t
    for name, mod in gpt.named_modules():
        if isinstance(mod, LoraLayer) and ADAPTER in mod.lora_A:
            base = mod.get_base_layer().weight
            merged[f"{name}.weight"] = base + mod.get_delta_weight(ADAPTER).to(base.dtype)
        elif isinstance(mod, TrainableTokensLayer) and ADAPTER in mod.token_indices:
            merged[official_key(f"{name}.base_layer.weight")] = mod.get_merged_weights([ADAPTER])
    return {k: v.detach().clone() for k, v in merged.items()}


# -------------------------------------------------------------------------------------- adapter files


def peft_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every key under PEFT_PREFIX, as ``PeftModel.save_pretrained`` writes them."""
    return {k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k: v for k, v in state.items()}


def module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with PEFT_PREFIX removed: keys relative to the model itself (older tagtune folders have no prefix)."""
    return {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}


def save_adapter(gpt: nn.Module, out_dir: str | Path, meta: dict, files: dict[str, Path] | None = None,
                 base_model: str | None = None) -> Path:
    """Write ``gpt``'s adapter as a PEFT folder that stock ``PeftModel.from_pretrained`` loads.

    ``meta`` (tag names and ids, text rows, base fingerprint ...) goes to ``tagtune_adapter.json``;
    ``base_model`` (the base folder or name) to ``base_model_name_or_path``; ``files`` (name -> source path,
    e.g. the extended ``bpe.model`` and ``tags.json``) are copied beside them.
    """
    state = get_peft_model_state_dict(gpt, adapter_name=ADAPTER)
    out = write_adapter(out_dir, gpt.peft_config[ADAPTER], state, meta, base_model)
    for name, src in (files or {}).items():
        atomic_write_bytes(out / name, Path(src).read_bytes())
    return out


def write_adapter(out_dir: str | Path, config: LoraConfig, state: dict[str, torch.Tensor], meta: dict,
                  base_model: str | None = None) -> Path:
    """adapter_config.json, adapter_model.safetensors (PEFT's key prefix), tagtune_adapter.json and the card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    config.base_model_name_or_path = base_model
    # None on purpose: PeftModel.from_pretrained then builds the plain PeftModel, whose forward hands every
    # argument to UnifiedVoice. A task type picks an HF-model wrapper: CAUSAL_LM needs
    # prepare_inputs_for_generation, FEATURE_EXTRACTION renames the arguments to input_ids/attention_mask.
    config.task_type = None
    config.inference_mode = True
    atomic_write_text(out / ADAPTER_CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list))
    save_safetensors(out / ADAPTER_WEIGHTS_FILE, peft_keys(state), metadata={"format": "pt"})
    atomic_write_text(out / ADAPTER_META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    atomic_write_text(out / ADAPTER_CARD_FILE, adapter_card(config, meta))
    return out


def rewrite_adapter(src_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """Write the adapter of ``src_dir`` (this format or the older one without the key prefix) to ``out_dir``
    in PEFT's format, with ``base_model`` recorded; other files of ``src_dir`` are not copied."""
    src_dir = Path(src_dir)
    meta_path = src_dir / ADAPTER_META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    state = read_state_dict(src_dir / ADAPTER_WEIGHTS_FILE)
    return write_adapter(out_dir, read_adapter_config(src_dir), state, meta, base_model)


def adapter_card(config: LoraConfig, meta: dict) -> str:
    """The adapter folder's README.md: what it was trained on, its tags, and how to load it."""
    tags = meta.get("tag_names") or []
    ids = meta.get("new_token_ids") or []
    rows = "\n".join(f"| `{tag}` | {i} |" for tag, i in zip(tags, ids))
    base = config.base_model_name_or_path or "(not recorded)"
    return ADAPTER_CARD.format(base=base, rank=config.r, alpha=config.lora_alpha, rows=rows or "| - | - |",
                               example_tag=tags[0] if tags else "<laughs>",
                               number_text_tokens=meta.get("number_text_tokens", "?"),
                               targets=", ".join(sorted(config.target_modules or ())))


ADAPTER_CARD = """---
library_name: peft
base_model: {base}
tags:
- indextts
- lora
- tagtune
---

# IndexTTS LoRA adapter with expressive tags

LoRA for the IndexTTS GPT (`UnifiedVoice` of 1.x, or `UnifiedVoiceV2` of IndexTTS-2: the same trunk and text
tables), written by tagtune in PEFT's format.

- Base model: `{base}`
- LoRA: rank {rank}, alpha {alpha}, on {targets}; the new rows of `text_embedding` (trainable tokens) and
  `text_head` (weight and bias, a saved copy of the whole head)
- Text rows: `number_text_tokens` = {number_text_tokens} (tag rows inserted before the spare last row)
- `task_type` is null on purpose: stock PEFT then wraps the model in the plain `PeftModel`, which passes
  every argument to `UnifiedVoice.forward`.

| tag | token id |
|---|---|
{rows}

The tokenizer that knows the tags is `bpe.model` in this folder (`tags.json` lists them).

## Load with tagtune

```
tagtune synth --model {base} --adapter path/to/this/folder \\
    --ref voice.wav --text "Well {example_tag} fine." --out out.wav
```

or `tagtune.load_model("{base}", adapter="path/to/this/folder")` in Python.

## Load with stock PEFT

The base GPT has fewer text rows than the adapter: grow it first (the official `UnifiedVoice` with its
`gpt.pth` loaded works too), then load and merge:

```python
import tagtune
from peft import PeftModel

adapter = "path/to/this/folder"
gpt = tagtune.load_model("{base}").gpt
tagtune.grow_for_adapter(gpt, adapter)
gpt = PeftModel.from_pretrained(gpt, adapter).merge_and_unload()
```
"""


def read_adapter_config(adapter_dir: str | Path) -> LoraConfig:
    """The LoraConfig stored in an adapter folder."""
    path = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {adapter_dir} a PEFT adapter folder?)")
    return LoraConfig.from_pretrained(str(adapter_dir))


def load_adapter(gpt: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Inject the adapter stored in ``adapter_dir`` into ``gpt`` (grown to the adapter's rows) and load it."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    inject_adapter_in_model(config, gpt, adapter_name=ADAPTER)
    state = module_keys(read_state_dict(adapter_dir / ADAPTER_WEIGHTS_FILE))
    result = set_peft_model_state_dict(gpt, state, adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise CheckpointError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: unexpected keys {result.unexpected_keys[:5]}")
    gpt.requires_grad_(False)
    return gpt
