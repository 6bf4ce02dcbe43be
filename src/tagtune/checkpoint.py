"""The one module that reads and writes model files.

Official IndexTTS 1.0 / 1.5 folders (config.yaml, gpt.pth, dvae.pth, bigvgan_generator.pth, bpe.model) load
as they are: fp16 or fp32 weights, a bare state dict or one wrapped in ``model`` (GPT/DVAE) or ``generator``
(BigVGAN). Every ``.pth`` goes through ``torch.load(weights_only=True)``; models are built on the meta
device and receive their tensors with ``assign=True``, so a 1.5 GB checkpoint is never allocated twice.
tagtune's own folders use the same layout with ``.safetensors`` weight files.

IndexTTS-2 parts read here as well: its config.yaml (``ModelConfigV2``), gpt.pth, the emotion matrices
(feat1/feat2.pt), and w2v-BERT 2.0 from its Hugging Face folder with the feature statistics.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from tagtune.atomic import atomic_write_bytes, atomic_write_text
from tagtune.config import ConfigError, GPTConfig, GPTV2Config, ModelConfig, ModelConfigV2
from tagtune.errors import UserError
from tagtune.folders import (
    AUX_MODELS_DIR,
    BIGVGAN_V2_CONFIG_FILE,
    BIGVGAN_V2_WEIGHTS_FILE,
    CONFIG_FILE,
    W2V_BERT_CONFIG_FILE,
)

WRAPPER_KEYS = ("model", "generator", "state_dict")


class CheckpointError(UserError, RuntimeError):
    """A model file that cannot be used: missing, truncated, unsafe, or not matching the config."""


# ----------------------------------------------------------------------------------------------- reading


def read_config(model_dir: str | Path) -> ModelConfig:
    """Parse ``config.yaml`` of a model folder into a ModelConfig (errors name the file)."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {model_dir} an IndexTTS model folder?)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ModelConfig.from_dict(data)
    except (yaml.YAMLError, ConfigError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_state_dict(path: str | Path, wrapper: str | None = None) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` (weights only) or ``.safetensors`` file and unwrap ``model``/``generator`` dicts."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return _unwrap(_torch_load(path), path, wrapper)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of an existing file, with its failures as CheckpointErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused — the file holds Python objects other than tensors (a pickle that could run "
            f"code). Only plain state dicts are loaded. Detail: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read (truncated or corrupt file?): {e}") from None


def _can_mmap(path: Path) -> bool:
    """mmap works for the zip format only (torch >= 1.6 files); legacy files load normally."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _unwrap(obj: Any, path: Path, wrapper: str | None) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and wrapper and wrapper in obj and isinstance(obj[wrapper], dict):
        obj = obj[wrapper]
    elif isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
              dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Strictly load ``state`` into ``module`` (built on meta or real tensors).

    Every mismatch is reported at once, naming the file, each key and both shapes. Floating tensors are
    cast to ``dtype`` (default: the module's own parameter dtype, fp32), so fp16 files load into fp32.
    """
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    persistent = set(module.state_dict())  # non-persistent buffers are not stored in checkpoints
    own = {k: v for k, v in own.items() if k in persistent}
    problems = []
    for key in sorted(set(own) - set(state)):
        problems.append(f"missing key {key} (expected shape {tuple(own[key].shape)})")
    for key in sorted(set(state) - set(own)):
        hint = _rename_hint(key, own)
        problems.append(f"unexpected key {key} (shape {tuple(state[key].shape)}){hint}")
    for key in sorted(set(state) & set(own)):
        if tuple(state[key].shape) != tuple(own[key].shape):
            problems.append(f"key {key}: file has shape {tuple(state[key].shape)}, "
                            f"model expects {tuple(own[key].shape)}")
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{path}: does not match the model described by config.yaml:\n  {shown}")
    target = dtype or torch.float32
    ready = {k: t.to(device=device, dtype=target if t.is_floating_point() else t.dtype) for k, t in state.items()}
    module.load_state_dict(ready, strict=True, assign=True)
    if hasattr(module, "init_non_persistent"):  # buffers not stored in checkpoints (filters, tables)
        module.init_non_persistent(device)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: internal error, tensors left unmaterialised after loading: {left[:5]}")
    return module


def _rename_hint(key: str, own: dict[str, torch.Tensor]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    similar = [k for k in own if k.rsplit(".", 1)[-1] == leaf and k.split(".")[0] == key.split(".")[0]]
    return f" — renamed? the model has e.g. {similar[0]}" if similar and len(similar) < 50 else ""


# ------------------------------------------------------------------------------------------ model folders


def _build(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def load_gpt(model_dir: str | Path, cfg: ModelConfig | None = None, *, dtype=None, device="cpu"):
    """The UnifiedVoice GPT of a model folder, in eval mode."""
    from tagtune.models.unified_voice import UnifiedVoice

    cfg = cfg or read_config(model_dir)
    path = Path(model_dir) / cfg.gpt_checkpoint
    state = read_state_dict(path, "model")
    _check_text_rows(state, cfg, path)
    gpt = load_into(_build(lambda: UnifiedVoice(cfg.gpt)), state, path, dtype, device)
    return gpt.eval()


def _check_text_rows(state: dict, cfg: ModelConfig, path: Path) -> None:
    """Catch a tokenizer/embedding mismatch with a message about the vocabulary, not just shapes."""
    w = state.get("text_embedding.weight")
    if w is not None and w.shape[0] != cfg.gpt.text_rows:
        raise CheckpointError(
            f"{path}: key text_embedding.weight has {w.shape[0]} rows but config.yaml says number_text_tokens="
            f"{cfg.gpt.number_text_tokens} (expects {cfg.gpt.text_rows} = tokens + 1 spare row). Was the model "
            "grown with tags without updating config.yaml, or is this the wrong config?"
        )


def load_dvae(model_dir: str | Path, cfg: ModelConfig | None = None, *, device="cpu"):
    from tagtune.models.dvae import DiscreteVAE

    cfg = cfg or read_config(model_dir)
    path = Path(model_dir) / cfg.dvae_checkpoint
    state = read_state_dict(path, "model")
    return load_into(_build(lambda: DiscreteVAE(cfg.vqvae)), state, path, torch.float32, device).eval()


def load_bigvgan(model_dir: str | Path, cfg: ModelConfig | None = None, *, device="cpu"):
    """BigVGAN with weight norm folded into plain weights (as the official code does after loading)."""
    from tagtune.models.bigvgan import BigVGAN

    cfg = cfg or read_config(model_dir)
    path = Path(model_dir) / cfg.bigvgan_checkpoint
    state = read_state_dict(path, "generator")
    voc = load_into(_build(lambda: BigVGAN(cfg.bigvgan)), state, path, torch.float32, device)
    if any(k.endswith("weight_g") for k in state):
        voc.remove_weight_norm()
    return voc.eval()


def bpe_path(model_dir: str | Path, cfg: ModelConfig | None = None) -> Path:
    cfg = cfg or read_config(model_dir)
    path = Path(model_dir) / cfg.dataset.bpe_model
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer not found (config dataset.bpe_model = {cfg.dataset.bpe_model})")
    return path


# ------------------------------------------------------------------------------------------- IndexTTS2 parts


def model_family(model_dir: str | Path) -> str:
    """"v2" for an IndexTTS-2 folder (its config.yaml has ``s2mel`` or ``semantic_codec``), else "v1"."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return "v1"  # read_config names the problem
    return "v2" if isinstance(data, dict) and ("s2mel" in data or "semantic_codec" in data) else "v1"


def read_config_v2(model_dir: str | Path) -> ModelConfigV2:
    """Parse the ``config.yaml`` of an IndexTTS-2 folder (errors name the file)."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {model_dir} an IndexTTS-2 model folder?)")
    try:
        return ModelConfigV2.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ConfigError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_model_config(model_dir: str | Path) -> ModelConfig | ModelConfigV2:
    """The config of a model folder of either family (``ModelConfigV2`` for an IndexTTS-2 folder)."""
    return read_config_v2(model_dir) if model_family(model_dir) == "v2" else read_config(model_dir)


# files a folder of each family holds beside its GPT weights and tokenizer (config keys naming them)
V1_COMPANIONS = ("dvae_checkpoint", "bigvgan_checkpoint")
V2_COMPANIONS = ("s2mel_checkpoint", "w2v_stat", "emo_matrix", "spk_matrix")


def companion_files(cfg: ModelConfig | ModelConfigV2) -> list[str]:
    """The files (names relative to the folder) a copy of the folder carries over unchanged: the DVAE and
    vocoder of 1.x; s2mel, the w2v-BERT statistics and the emotion matrices of IndexTTS-2."""
    keys = V2_COMPANIONS if isinstance(cfg, ModelConfigV2) else V1_COMPANIONS
    return [getattr(cfg, key) for key in keys]


def carry_over(model_dir: Path, out_dir: Path, cfg) -> None:
    """Copy into ``out_dir`` what a grown folder keeps unchanged (``companion_files``) and, for an IndexTTS-2
    folder, hard-link its auxiliary models and QwenEmotion folder when present (symbolic links inside a
    Hugging Face cache stay links)."""
    for name in companion_files(cfg):
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        copy_durably(model_dir / name, out_dir / name)
    if isinstance(cfg, ModelConfigV2):
        for name in (AUX_MODELS_DIR, cfg.qwen_emo_path.rstrip("/")):
            if (model_dir / name).is_dir():
                shutil.copytree(model_dir / name, out_dir / name, symlinks=True, copy_function=link_or_copy)


def copy_durably(src: str | Path, dst: str | Path) -> None:
    """A copy of ``src`` at ``dst`` flushed to disk, so that a folder published after it holds whole files.

    A copy, not a hard link: a user who rewrites an exported file in place (``torch.save`` over it) must not
    change the base it came from."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: not found")
    shutil.copy2(src, dst)
    _fsync(dst)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link of ``src`` at ``dst``, or a durable copy where linking is refused (another file system).
    Only for the auxiliary models of an IndexTTS-2 folder: gigabytes of downloaded hub files nobody edits."""
    try:
        os.link(src, dst)
    except OSError:
        copy_durably(src, dst)


def _fsync(dst: Path) -> None:
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_gpt(gpt_cfg: GPTConfig) -> nn.Module:
    """The GPT of ``gpt_cfg``'s family (UnifiedVoice, or UnifiedVoiceV2 for a ``GPTV2Config``) on the meta
    device, ready for ``load_into``."""
    if isinstance(gpt_cfg, GPTV2Config):
        from tagtune.models.v2.gpt import UnifiedVoiceV2 as GPT
    else:
        from tagtune.models.unified_voice import UnifiedVoice as GPT
    return _build(lambda: GPT(gpt_cfg))


def read_tensor(path: str | Path) -> torch.Tensor:
    """A ``.pt`` file holding one bare tensor (the emotion matrices ``feat1.pt`` / ``feat2.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    obj = _torch_load(path)
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: expected one tensor, got {type(obj).__name__}")
    return obj


def load_gpt_v2(model_dir: str | Path, cfg: ModelConfigV2 | None = None, *, dtype=None, device="cpu"):
    """The IndexTTS2 UnifiedVoice of a model folder (``gpt_checkpoint``, bare or under ``model``), in eval mode."""
    from tagtune.models.v2.gpt import UnifiedVoiceV2

    cfg = cfg or read_config_v2(model_dir)
    path = Path(model_dir) / cfg.gpt_checkpoint
    state = read_state_dict(path, "model")
    _check_text_rows(state, cfg, path)
    gpt = load_into(_build(lambda: UnifiedVoiceV2(cfg.gpt)), state, path, dtype, device)
    return gpt.eval()


def read_emotion_matrices(model_dir: str | Path, cfg: ModelConfigV2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spk_matrix (R, 192), emo_matrix (R, D))`` float32; R = sum(emo_num) rows, checked."""
    rows = sum(cfg.emo_num)
    out = []
    for name, width in ((cfg.spk_matrix, None), (cfg.emo_matrix, cfg.gpt.model_dim)):
        path = Path(model_dir) / name
        t = read_tensor(path).float()
        if t.ndim != 2 or t.shape[0] != rows or (width is not None and t.shape[1] != width):
            want = f"({rows}, {width if width is not None else 'style width'})"
            raise CheckpointError(f"{path}: shape {tuple(t.shape)}, expected {want} from emo_num {cfg.emo_num}")
        out.append(t)
    return out[0], out[1]


def load_semantic_features(w2v_dir: str | Path, model_dir: str | Path, cfg: ModelConfigV2 | None = None, *,
                           device="cpu"):
    """w2v-BERT 2.0 from its Hugging Face folder, cut after the layer IndexTTS2 reads, with the feature
    statistics ``w2v_stat`` of the model folder: a SemanticFeatures module in eval mode (float32).

    The layers past the one used are not built; their weights in the file are the only keys left unused.
    """
    import transformers
    from transformers import Wav2Vec2BertModel

    from tagtune.models.v2.semantic_features import SemanticFeatures

    cfg = cfg or read_config_v2(model_dir)
    layer = cfg.sizes.w2v_bert_hidden_layer
    w2v_dir = Path(w2v_dir)
    if not (w2v_dir / W2V_BERT_CONFIG_FILE).is_file():
        raise CheckpointError(f"{w2v_dir}: no w2v-BERT 2.0 folder here ({W2V_BERT_CONFIG_FILE} not found)")
    verbosity, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the skipped layers are checked below, not shown as a table
    transformers.logging.disable_progress_bar()
    try:
        model, info = Wav2Vec2BertModel.from_pretrained(
            w2v_dir, local_files_only=True, num_hidden_layers=layer, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{w2v_dir}: cannot load w2v-BERT 2.0: {e}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()
    skipped = re.compile(r"encoder\.layers\.(\d+)\.")
    unexpected = [k for k in info["unexpected_keys"] if not ((m := skipped.match(k)) and int(m.group(1)) >= layer)]
    problems = [f"missing key {k}" for k in sorted(info["missing_keys"])]
    problems += [f"unexpected key {k}" for k in sorted(unexpected)]
    problems += [f"key {k}: wrong shape" for k in sorted(info["mismatched_keys"])]
    if problems:
        raise CheckpointError(f"{w2v_dir}: does not match its config.json:\n  " + "\n  ".join(problems[:12]))
    stats_path = Path(model_dir) / cfg.w2v_stat
    stats = read_state_dict(stats_path)
    if set(stats) != {"mean", "var"} or any(t.shape != (model.config.hidden_size,) for t in stats.values()):
        raise CheckpointError(f"{stats_path}: expected {{'mean', 'var'}} of shape ({model.config.hidden_size},), "
                              f"got { {k: tuple(v.shape) for k, v in stats.items()} }")
    return SemanticFeatures(model, stats["mean"].float(), stats["var"].float()).to(device).eval()


def load_semantic_codec(path: str | Path, cfg: ModelConfigV2 | None = None, *, device="cpu"):
    """The MaskGCT semantic codec from ``semantic_codec_model.safetensors`` (all tensors, the unused decoder
    included), weight norm folded, in eval mode."""
    from tagtune.models.v2.codec import RepCodec

    cfg = cfg or ModelConfigV2()
    codec = load_into(_build(lambda: RepCodec(cfg.semantic_codec)), read_state_dict(path), path, torch.float32,
                      device)
    codec.remove_weight_norm()
    return codec.eval()


def load_s2mel(model_dir: str | Path, cfg: ModelConfigV2 | None = None, *, device="cpu"):
    """s2mel (``gpt_layer``, ``length_regulator``, ``cfm``) from ``s2mel_checkpoint``: ``{'net': {part: state}}``,
    every part loaded strictly; weight norm folded, eval mode."""
    from tagtune.models.v2.s2mel import S2Mel

    cfg = cfg or read_config_v2(model_dir)
    path = Path(model_dir) / cfg.s2mel_checkpoint
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    net = _torch_load(path)
    net = net.get("net") if isinstance(net, dict) else None
    parts = ("cfm", "length_regulator", "gpt_layer")
    if not isinstance(net, dict) or any(not isinstance(net.get(p), dict) for p in parts):
        raise CheckpointError(f"{path}: expected {{'net': {{'cfm', 'length_regulator', 'gpt_layer'}}}} state dicts")
    state = {f"{part}.{key}": t for part in parts for key, t in net[part].items()}
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: the s2mel parts must hold only tensors")
    s2mel = load_into(_build(lambda: S2Mel(cfg.s2mel, cfg.sizes.gpt_layer_in_dim)), state, path, torch.float32,
                      device)
    s2mel.remove_weight_norm()
    return s2mel.eval()


def load_campplus(path: str | Path, cfg: ModelConfigV2 | None = None, *, device="cpu"):
    """CAMPPlus from ``campplus_cn_common.bin`` (a bare state dict), eval mode; widths from ``cfg.sizes``."""
    from tagtune.models.v2.campplus import CAMPPlus

    cfg = cfg or ModelConfigV2()
    widths, style_dim = cfg.sizes.campplus_extra_kwargs, cfg.s2mel.style_encoder.dim
    model = _build(lambda: CAMPPlus(widths, embedding_size=style_dim))
    return load_into(model, read_state_dict(path), path, torch.float32, device).eval()


def load_bigvgan_v2(folder: str | Path, *, device="cpu"):
    """BigVGAN v2 from its Hugging Face folder (``config.json``, ``bigvgan_generator.pt`` = ``{'generator':
    state}``), weight norm folded, eval mode."""
    from tagtune.models.v2.bigvgan_v2 import BigVGANv2, BigVGANv2Config

    folder = Path(folder)
    config_path, path = folder / BIGVGAN_V2_CONFIG_FILE, folder / BIGVGAN_V2_WEIGHTS_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found (is {folder} a BigVGAN v2 folder?)")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        cfg = BigVGANv2Config.from_dict(data if isinstance(data, dict) else {"": data})
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    state = read_state_dict(path, "generator")
    voc = load_into(_build(lambda: BigVGANv2(cfg)), state, path, torch.float32, device)
    voc.remove_weight_norm()
    return voc.eval()


# -------------------------------------------------------------------------------------------------- writing


def write_config(model_dir: str | Path, cfg: ModelConfig) -> None:
    atomic_write_text(Path(model_dir) / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def save_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(path, save(contiguous, metadata=metadata))


def save_pth(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """A plain state dict in torch's zip format: what the official strict loader reads."""
    buf = io.BytesIO()
    torch.save({k: v.detach().contiguous().cpu() for k, v in state.items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_fingerprint(model_dir: str | Path, cfg: ModelConfig | ModelConfigV2 | None = None) -> str:
    """A short hash identifying a model folder (config + GPT weights + tokenizer)."""
    cfg = cfg or read_model_config(model_dir)
    h = hashlib.sha256()
    for name in (CONFIG_FILE, cfg.gpt_checkpoint, cfg.dataset.bpe_model):
        p = Path(model_dir) / name
        h.update(name.encode())
        h.update(file_sha256(p).encode() if p.is_file() else b"-")
    return h.hexdigest()[:16]
