"""One loaded base, several tag adapters on it: what the server decodes with.

The base GPT is loaded once. Each adapter folder adds, under its own name, only what it trained: its LoRA
matrices (peft layers injected into the shared blocks, one named adapter each), its tag rows of
``text_embedding`` and its tokenizer with tags. A ``Lane`` is one servable model (the base, or the base with
one adapter): it switches the shared blocks to its adapter before a batch and embeds text with its own tag
rows. ``text_head`` rows are not needed to generate speech and are not kept. Adapters that also trained the
conditioning encoder change the voice conditioning itself; they are refused (serve their merged export).

An IndexTTS-2 base (``family`` "v2") is served the same way: UnifiedVoiceV2 shares the 1.x token trunk, so
lanes, LoRA injection and tag rows are the same; ``tts[name]`` is a ``TTSV2`` per lane (speaker prompts,
emotion vector, and the back end: latent pass, s2mel, BigVGAN v2) whose GPT is the lane. An adapter trained on
the other family is refused.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from peft import inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from tagtune import lora
from tagtune.checkpoint import CheckpointError, model_family, read_state_dict
from tagtune.errors import UserError
from tagtune.folders import ADAPTER_WEIGHTS_FILE
from tagtune.loaders import load_model, read_adapter_meta
from tagtune.models.unified_voice import aligned_tokens, segment_hidden
from tagtune.synthesis.tts import MAX_TEXT_CHARS

BASE = "base"  # the name the base model is served under when no other name is given
TAG_ROWS_KEY = "text_embedding.token_adapter.trainable_tokens_delta"
HEAD_ONLY = {"text_head"}  # the only saved module an adapter may carry: generation never reads it
FAMILY_NAMES = {"v1": "IndexTTS 1.x", "v2": "IndexTTS-2"}


class AdapterError(UserError, ValueError):
    """An adapter folder that cannot be served on this base."""


class Lane:
    """One servable model: the shared base with adapter ``adapter`` (None: the plain base) active.

    Duck-types the parts of UnifiedVoice that prompts, decoding and the latent pass use (``cfg``,
    ``embed_text``, ``embed_mel``, ``gpt``, ``final_norm``, ``mel_logits_from_hidden``).
    """

    def __init__(self, name: str, base, tokenizer, adapter: str | None = None,
                 tag_rows: torch.Tensor | None = None, first_tag_id: int = 0):
        self.name, self.base, self.tokenizer, self.adapter = name, base, tokenizer, adapter
        self.tag_rows, self.first_tag_id = tag_rows, first_tag_id  # (k, D) rows for ids first_tag_id ..
        self.cfg = base.cfg

    def __getattr__(self, name):  # embed_mel, gpt, final_norm, mel_logits_from_hidden, ... of the base
        return getattr(self.base, name)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text ids (B, L) -> embeddings + text positions (B, L, D); tag ids take this lane's rows."""
        if self.tag_rows is None:
            return self.base.embed_text(ids)
        is_tag = ids >= self.first_tag_id
        emb = self.base.text_embedding(torch.where(is_tag, torch.zeros_like(ids), ids))
        tags = self.tag_rows[(ids - self.first_tag_id).clamp(0, len(self.tag_rows) - 1)]
        return torch.where(is_tag[..., None], tags, emb) + self.base.text_pos_embedding(ids)

    def activate(self) -> None:
        """Make the shared blocks compute with this lane's adapter (or none)."""
        for module in self.base.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(self.adapter is not None)
                if self.adapter is not None:
                    module.set_adapter(self.adapter)

    def __call__(self, conds, emovec, text_ids, text_lengths, codes, code_lengths) -> torch.Tensor:
        """``UnifiedVoiceV2.forward`` with this lane's tag rows: the s2mel latents (B, N, D) of final codes."""
        tokens = aligned_tokens(self.cfg, text_ids, text_lengths, codes, code_lengths)
        _, mel_h = segment_hidden(self, self.base.conditioning_prefix(conds, emovec), tokens, False)
        return mel_h[:, :-2]


class LaneModelV2:
    """A ``LoadedModelV2`` seen through one lane: its GPT is the lane, its tokenizer the lane's (what TTSV2 reads)."""

    def __init__(self, loaded, lane: Lane):
        self.loaded, self.gpt, self.tokenizer = loaded, lane, lane.tokenizer

    def __getattr__(self, name):  # s2mel, vocoder, semantic_codec, campplus, config, ... of the loaded folder
        return getattr(self.loaded, name)


class SharedBase:
    """One base GPT (+ vocoder, mel, tokenizer) and named adapters on it; ``lanes[name]`` is what requests pick."""

    def __init__(self, gpt, vocoder, mel, tokenizer, *, base_name: str = BASE, model_dir: Path | None = None,
                 loaded=None, max_text_chars: int = MAX_TEXT_CHARS):
        self.gpt, self.vocoder, self.mel, self.model_dir = gpt, vocoder, mel, model_dir
        self.lanes: dict[str, Lane] = {base_name: Lane(base_name, gpt, tokenizer)}
        self.base_name = base_name
        self.loaded, self.max_text_chars = loaded, max_text_chars  # loaded: the LoadedModelV2 of a v2 base
        self.family = "v1" if loaded is None else loaded.family
        self.tts: dict[str, object] = {}  # v2: lane name -> TTSV2 over that lane
        if self.family == "v2":
            self._add_tts(self.lanes[base_name])

    @property
    def sample_rate(self) -> int:
        """Of the audio every lane gives: 24 kHz (BigVGAN of 1.x) or 22.05 kHz (BigVGAN v2)."""
        from tagtune.audio import SAMPLE_RATE
        from tagtune.audio_v2 import S2MEL_SAMPLE_RATE

        return S2MEL_SAMPLE_RATE if self.family == "v2" else SAMPLE_RATE

    @classmethod
    def open(cls, model_dir: str | Path, adapters: dict[str, str | Path] | None = None, *, device: str = "cpu",
             base_name: str = BASE, max_text_chars: int = MAX_TEXT_CHARS) -> SharedBase:
        """Load a model folder (IndexTTS 1.x or 2) once and add every adapter folder under its name."""
        m = load_model(model_dir, device=device, eager=True)
        if m.family == "v2":
            shared = cls(m.gpt, m.vocoder, None, m.tokenizer, base_name=base_name, model_dir=Path(model_dir),
                         loaded=m, max_text_chars=max_text_chars)
        else:
            shared = cls(m.gpt, m.vocoder, m.mel, m.tokenizer, base_name=base_name, model_dir=Path(model_dir),
                         max_text_chars=max_text_chars)
        for name, folder in (adapters or {}).items():
            shared.add_adapter_folder(name, Path(folder))
        return shared

    def _add_tts(self, lane: Lane) -> None:
        from tagtune.synthesis.tts_v2 import TTSV2

        # fp32: the pool decodes with the lane itself; the back end runs fp32 as TTSV2's does
        self.tts[lane.name] = TTSV2(LaneModelV2(self.loaded, lane), name=lane.name, precision="fp32",
                                    max_text_chars=self.max_text_chars)

    def check_family(self, folder: Path, meta: dict, config) -> None:
        """Refuse an adapter whose recorded base is of the other IndexTTS family."""
        recorded = (meta.get("base") or {}).get("dir") or config.base_model_name_or_path
        if not recorded or not Path(recorded).is_dir():
            return  # not recorded: the tokenizer and tag-row checks still catch a foreign base
        theirs = model_family(recorded)
        if theirs != self.family:
            raise AdapterError(f"{folder}: an {FAMILY_NAMES[theirs]} adapter (trained on {recorded}) cannot be "
                               f"served on this {FAMILY_NAMES[self.family]} base")

    def add_adapter_folder(self, name: str, folder: Path) -> Lane:
        """Add the adapter an ``export --adapter-only`` folder holds, served as ``name``."""
        meta = read_adapter_meta(folder)
        config = lora.read_adapter_config(folder)
        self.check_family(folder, meta, config)
        if meta.get("mode") == "full":
            raise AdapterError(f"{folder}: a full fine-tuning run has no adapter; serve its merged export")
        extra = set(config.modules_to_save or ()) - HEAD_ONLY
        if extra:
            raise AdapterError(f"{folder}: the adapter also trained {sorted(extra)}; serve its merged export")
        ids = list((config.trainable_token_indices or {}).get("text_embedding", []))
        if ids != list(meta.get("new_token_ids", ids)):
            raise AdapterError(f"{folder}: its config and its description disagree on the tag rows")
        state = {_strip(k): v for k, v in read_state_dict(folder / ADAPTER_WEIGHTS_FILE).items()}
        tokenizer = load_model(self.model_dir, folder).tokenizer
        pieces = self.gpt.cfg.text_rows - 1
        if tokenizer.vocab_size != pieces + len(ids):
            raise AdapterError(f"{folder}: its tokenizer has {tokenizer.vocab_size} pieces, the base {pieces} "
                               f"plus {len(ids)} tag rows; is this {FAMILY_NAMES[self.family]} base the "
                               "adapter's base model?")
        try:
            return self.add_lora(name, config, state, tokenizer, state.get(TAG_ROWS_KEY), ids)
        except AdapterError as e:
            raise AdapterError(f"{folder}: {e}") from None

    def add_lora(self, name: str, config, state: dict[str, torch.Tensor], tokenizer,
                 tag_rows: torch.Tensor | None = None, tag_ids: list[int] = ()) -> Lane:
        """Inject LoRA ``config`` under ``name`` into the shared blocks, load its matrices from ``state``
        (keys as peft saves them), and return the lane that serves it with ``tokenizer`` (its pieces: the
        base's, then one per tag id) and ``tag_rows`` (k, D) for ``tag_ids``."""
        if name in self.lanes:
            raise AdapterError(f"the name {name!r} is used twice (or is the base's name)")
        pieces = self.gpt.cfg.text_rows - 1  # the base's vocabulary; tags follow it
        if list(tag_ids) != list(range(pieces, pieces + len(tag_ids))):
            raise AdapterError(f"its tag rows {list(tag_ids)} do not follow this base's {pieces} pieces; is this "
                               "the adapter's base model?")
        lora_only = dataclasses.replace(config, trainable_token_indices=None, modules_to_save=None, lora_dropout=0.0)
        with warnings.catch_warnings():  # peft warns that a second adapter joins the model: that is the point
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            inject_adapter_in_model(lora_only, self.gpt, adapter_name=name)
        result = set_peft_model_state_dict(self.gpt, {k: v for k, v in state.items() if ".lora_" in k},
                                           adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
        if missing:
            raise CheckpointError(f"missing LoRA weights {missing[:3]}")
        self.gpt.requires_grad_(False).eval()  # injected layers are created in training mode
        rows = tag_rows.to(self.gpt.mel_head.weight) if tag_rows is not None else None
        self.lanes[name] = Lane(name, self.gpt, tokenizer, name, rows, pieces)
        self.lanes[self.base_name].activate()
        if self.family == "v2":
            self._add_tts(self.lanes[name])
        return self.lanes[name]


def _strip(key: str) -> str:
    """Adapter file keys carry PEFT's ``base_model.model.`` prefix; the shared model's names do not."""
    return key.removeprefix("base_model.model.")
