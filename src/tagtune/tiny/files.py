"""Writing the tiny base folder: official file layout, storage dtypes, and the BUILD.json record.

Storage: ``gpt.pth`` and ``bigvgan_generator.pth`` hold float16 tensors (the ECAPA speaker encoder alone,
whose widths the official BigVGAN hard-codes, is ~23 MB in float32); loaders cast them to float32, as the
official ``load_state_dict`` does when copying into a float32 model. ``dvae.pth`` stays float32 so the
nearest-code search sees the exact k-means centroids. All files are written atomically.
"""

from __future__ import annotations

import io
import json
import platform
from pathlib import Path

import sentencepiece
import torch

from tagtune.checkpoint import CONFIG_FILE, atomic_write_bytes, atomic_write_text, file_sha256, write_config
from tagtune.config import ModelConfig

BUILD_FILE = "BUILD.json"
STORAGE_DTYPES = {"gpt": "float16", "dvae": "float32", "bigvgan": "float16"}
GENERATOR_WRAPPER = "generator"  # the official bigvgan_generator.pth holds {"generator": state_dict}


def _state(module: torch.nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    """A detached, contiguous state dict with floating tensors cast to ``dtype``."""
    target = getattr(torch, dtype)
    return {k: (v.to(target) if v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in module.state_dict().items()}


@torch.no_grad()
def round_trip(module: torch.nn.Module, dtype: str) -> None:
    """Round every floating parameter and buffer to ``dtype`` and back, in place (the stored values)."""
    target = getattr(torch, dtype)
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            t.copy_(t.to(target).to(t.dtype))


def _pth_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_folder(out_dir: Path, cfg: ModelConfig, bpe: bytes, gpt, dvae, vocoder) -> dict[str, Path]:
    """Write config.yaml, bpe.model and the three weight files; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, cfg)
    paths = {
        "config": out_dir / CONFIG_FILE,
        "bpe": out_dir / cfg.dataset.bpe_model,
        "gpt": out_dir / cfg.gpt_checkpoint,
        "dvae": out_dir / cfg.dvae_checkpoint,
        "bigvgan": out_dir / cfg.bigvgan_checkpoint,
    }
    atomic_write_bytes(paths["bpe"], bpe)
    atomic_write_bytes(paths["gpt"], _pth_bytes(_state(gpt, STORAGE_DTYPES["gpt"])))
    atomic_write_bytes(paths["dvae"], _pth_bytes(_state(dvae, STORAGE_DTYPES["dvae"])))
    generator = _state(vocoder, STORAGE_DTYPES["bigvgan"])
    atomic_write_bytes(paths["bigvgan"], _pth_bytes({GENERATOR_WRAPPER: generator}))
    return paths


def _environment(threads: int) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "sentencepiece": sentencepiece.__version__, "machine": platform.machine(), "torch_threads": threads}


def build_record(settings, command: str, seeds: dict, corpus: dict, timer, paths: dict[str, Path],
                 cfg: ModelConfig, results: dict, quality: dict) -> dict:
    """The BUILD.json content: how to rebuild, which voices, how good per language, what came out, how long."""
    sizes = {p.name: p.stat().st_size for p in paths.values()}
    corpus = dict(corpus)
    return {
        "builder": "tagtune.tiny.build",
        "command": command,
        "seed": settings.seed,
        "stage_seeds": seeds,
        "settings": settings.to_dict(),
        "voice_roles": {"engine": corpus["engine"], **corpus.pop("voice_roles")},
        "corpus": corpus,
        "vocab_size": cfg.gpt.number_text_tokens,
        "storage_dtypes": STORAGE_DTYPES,
        "quality": quality,
        "results": results,
        "timings_s": {**timer.seconds, "total": round(sum(timer.seconds.values()), 2)},
        "cpu_seconds": {**timer.cpu_seconds, "total": round(sum(timer.cpu_seconds.values()), 2)},
        "files": {p.name: {"bytes": sizes[p.name], "sha256": file_sha256(p)} for p in paths.values()},
        "folder_mb": round(sum(sizes.values()) / 1e6, 3),
        "environment": _environment(settings.threads),
        "notes": [
            "Corpus: untagged English and Mandarin (espeak-ng cmn) read by the pretrain voices only; the "
            "fine-tune and held-out voices of voice_roles never reach the base (the build raises otherwise).",
            "quality: per language, validation mel-code CE (stored weights) and the stop-code rate: the share of "
            "check_texts validation texts whose sampled generation (official settings, prompt = another clip "
            "of the same voice) ends with the stop code before the length limit.",
            "DVAE encoder: seeded random init; codebook: k-means of its outputs on the corpus mels; "
            "code 52 = digital silence (log-mel ln(1e-7)); decoder fitted with smooth-L1 for the given steps.",
            "BigVGAN: ECAPA speaker encoder left at its seeded random init; AMP blocks of upsampling stages >= "
            "vocoder_full_stages are exact identities (weight_g = 0); the rest fitted on GPT latents with a "
            "multi-resolution mel L1 loss.",
            "gpt.pth and bigvgan_generator.pth store float16 tensors (loaders cast to float32); "
            "reported GPT losses were measured with the stored (float16-rounded) weights.",
        ],
    }


def write_build_json(out_dir: Path, record: dict) -> None:
    atomic_write_text(out_dir / BUILD_FILE, json.dumps(record, indent=2, sort_keys=False) + "\n")
