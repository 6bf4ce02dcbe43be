"""Export a training run: a merged model folder in the official layout, or a PEFT adapter folder.

Merged (``export(run, out)``): ``config.yaml`` (number_text_tokens counts the tags), ``gpt.pth`` with exactly
the official key set in fp32 or fp16, the extended ``bpe.model``, ``tags.json``, the base model's
``dvae.pth`` and ``bigvgan_generator.pth``, ``provenance.json`` and ``tag_init.safetensors`` (the tag rows
before training, which ``tagtune eval`` grows the base with). The official strict loader accepts it
and so does ``tagtune.load_model``.

Adapter (``adapter_only=True``): the run's PEFT folder (adapter_config.json + adapter_model.safetensors,
tokenizer, tags) plus provenance; ``tagtune.load_model(base_dir, adapter=adapter_dir)`` applies it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from tagtune import lora
from tagtune.checkpoint import (atomic_write_bytes, atomic_write_text, folder_fingerprint,
                         read_config, read_state_dict, save_pth, write_config)
from tagtune.errors import UserError
from tagtune.loaders import load_adapter_model, read_run_info
from tagtune.folders import (ADAPTER_META_FILE, PROVENANCE_FILE, TAGS_FILE, BEST_DIR as BEST, FULL_WEIGHTS_FILE as FULL_WEIGHTS, GPT_FILE, LAST_DIR as LAST,
                             START_ROWS_FILE as START_ROWS, TOKENIZER_FILE as TOKENIZER)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export(run_dir: str | Path, out_dir: str | Path, adapter_only: bool = False, dtype: str = "fp32",
           which: str = "best", overwrite: bool = False) -> Path:
    """Write the run's ``which`` ("best" or "last") weights to ``out_dir``; returns ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if which not in (BEST, LAST):
        raise UserError(f"which must be '{BEST}' or '{LAST}', got {which!r}")
    info = read_run_info(run_dir)
    weights = run_dir / which
    if not weights.is_dir():
        raise UserError(f"{weights}: not found (has the run finished or validated yet?)")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} is not empty; choose another --out")
    base_dir = _base_dir(info)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = _provenance(info, run_dir, weights, dtype, adapter_only)
    if adapter_only:
        if info["mode"] != "lora":
            raise UserError(f"{run_dir} fine-tuned every weight (mode {info['mode']}): export it merged")
        for item in weights.iterdir():
            shutil.copy2(item, out_dir / item.name)
    else:
        _export_merged(info, base_dir, weights, out_dir, DTYPES[dtype])
    atomic_write_text(out_dir / PROVENANCE_FILE, json.dumps(provenance, indent=1, ensure_ascii=False))
    return out_dir


def _base_dir(info: dict) -> Path:
    base = Path(info["base"]["dir"])
    if not base.is_dir():
        raise UserError(f"base checkpoint folder {base} (recorded in run.json) not found")
    found = folder_fingerprint(base)
    if found != info["base"]["fingerprint"]:
        raise UserError(f"{base} changed since training (fingerprint {found}, run has {info['base']['fingerprint']})")
    return base


def merged_state(info: dict, base_dir: Path, weights: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(official-key state dict, grown ModelConfig) of a run's weights folder."""
    if info["mode"] == "lora":
        gpt, cfg = load_adapter_model(base_dir, weights)
        return lora.merge(gpt), cfg
    cfg = read_config(base_dir)
    cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, number_text_tokens=info["number_text_tokens"]))
    return read_state_dict(weights / FULL_WEIGHTS), cfg


def official_shapes(gpt_config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``gpt.pth`` for this config (built on the meta device)."""
    from tagtune.models.unified_voice import UnifiedVoice

    with torch.device("meta"):
        model = UnifiedVoice(gpt_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _export_merged(info: dict, base_dir: Path, weights: Path, out_dir: Path, dtype: torch.dtype) -> None:
    state, cfg = merged_state(info, base_dir, weights)
    expected = official_shapes(cfg.gpt)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        bad = sorted(set(got) ^ set(expected)) + [k for k in got if k in expected and got[k] != expected[k]]
        raise RuntimeError(f"merged weights do not match the official layout: {bad[:8]}")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_pth(out_dir / GPT_FILE, state)
    base_cfg = read_config(base_dir)
    cfg = dataclasses.replace(cfg, gpt_checkpoint=GPT_FILE,
                              dataset=dataclasses.replace(cfg.dataset, bpe_model=TOKENIZER))
    write_config(out_dir, cfg)
    atomic_write_bytes(out_dir / TOKENIZER, (weights / TOKENIZER).read_bytes())
    atomic_write_bytes(out_dir / TAGS_FILE, (weights / TAGS_FILE).read_bytes())
    if (weights / START_ROWS).is_file():  # the untrained tag rows: lets `tagtune eval` rebuild the start
        atomic_write_bytes(out_dir / START_ROWS, (weights / START_ROWS).read_bytes())
    for name in (base_cfg.dvae_checkpoint, base_cfg.bigvgan_checkpoint):
        shutil.copy2(base_dir / name, out_dir / name)


def _provenance(info: dict, run_dir: Path, weights: Path, dtype: str, adapter_only: bool) -> dict:
    meta = json.loads((weights / ADAPTER_META_FILE).read_text(encoding="utf-8"))
    return {
        "format": "peft-adapter" if adapter_only else "indextts-merged",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir.resolve()),
        "weights": weights.name,
        "step": meta.get("step"),
        "dtype": None if adapter_only else dtype,
        "base": info["base"],
        "data": info["data"],
        "tag_names": info["tag_names"],
        "new_token_ids": info["new_token_ids"],
        "number_text_tokens": info["number_text_tokens"],
        "versions": info["versions"],
    }
