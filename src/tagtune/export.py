"""Export a training run: a merged model folder in the official layout, or a PEFT adapter folder.

Merged (``export(run, out)``): ``config.yaml`` (number_text_tokens counts the tags), ``gpt.pth`` with exactly
the official key set in fp32 or fp16, the extended ``bpe.model``, ``tags.json``, the base model's
``dvae.pth`` and ``bigvgan_generator.pth``, ``provenance.json`` and ``tag_init.safetensors`` (the tag rows
before training, which ``tagtune eval`` grows the base with). The official strict loader accepts it
and so does ``tagtune.load_model``. A run on an IndexTTS-2 base exports in the official IndexTTS-2 layout:
the same files with the base's ``s2mel.pth``, ``wav2vec2bert_stats.pt``, ``feat1.pt``/``feat2.pt`` and its
auxiliary models (``hf_cache/``, when the base folder holds them) in place of the DVAE and vocoder.

Adapter (``adapter_only=True``): the run's adapter in PEFT's own format (adapter_config.json with the base
recorded, adapter_model.safetensors with PEFT's key prefix, a model card README.md), its tokenizer and tags,
plus provenance. ``tagtune.load_model(base_dir, adapter=adapter_dir)`` applies it; so does stock
``peft.PeftModel.from_pretrained`` on a base grown by ``tagtune.grow_for_adapter``.

Everything is checked before anything is written. The folder is built beside ``out_dir`` and renamed into
place whole (``atomic.publish_folder``): a kill leaves the previous folder, or none, never a partial one that
looks like a model; ``overwrite`` replaces an earlier export whole, stale files included, and refuses any
other non-empty folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch

from tagtune import lora
from tagtune.atomic import check_writable, publish_folder
from tagtune.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    build_gpt,
    carry_over,
    folder_fingerprint,
    read_model_config,
    read_state_dict,
    save_pth,
    write_config,
)
from tagtune.errors import UserError
from tagtune.folders import (
    ADAPTER_CARD_FILE,
    ADAPTER_CONFIG_FILE,
    ADAPTER_META_FILE,
    ADAPTER_WEIGHTS_FILE,
    BEST_DIR,
    FULL_WEIGHTS_FILE,
    GPT_FILE,
    LAST_DIR,
    PROVENANCE_FILE,
    RUN_INFO_FILE,
    START_ROWS_FILE,
    TAGS_FILE,
    TOKENIZER_FILE,
)
from tagtune.loaders import load_adapter_model, read_adapter_meta, read_run_info

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FORMATS = {"adapter": "peft-adapter", "merged": "indextts-merged"}  # provenance "format" of each kind


def export(run_dir: str | Path, out_dir: str | Path, adapter_only: bool = False, dtype: str = "fp32",
           which: str = "best", overwrite: bool = False) -> Path:
    """Write the run's ``which`` ("best" or "last") weights to ``out_dir``; returns ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}", params=("dtype",))
    if which not in (BEST_DIR, LAST_DIR):
        raise UserError(f"which must be '{BEST_DIR}' or '{LAST_DIR}', got {which!r}")
    info = _check_run_info(read_run_info(run_dir), run_dir)
    weights = run_dir / which
    if not weights.is_dir():
        raise UserError(f"{weights}: not found (has the run finished or validated yet?)")
    if adapter_only and info["mode"] != "lora":
        raise UserError(f"{run_dir} fine-tuned every weight (mode {info['mode']}): export it merged")
    _check_out_dir(out_dir, overwrite, {"the training run": run_dir, "the base model": Path(info["base"]["dir"])})
    base_dir = _base_dir(info)  # hashes the base's files: after the cheap checks
    provenance = _provenance(info, run_dir, weights, dtype, adapter_only)
    with publish_folder(out_dir) as staging:
        if adapter_only:
            _export_adapter(info, weights, staging)
        else:
            _export_merged(info, base_dir, weights, staging, DTYPES[dtype])
        atomic_write_text(staging / PROVENANCE_FILE, json.dumps(provenance, indent=1, ensure_ascii=False))
    return out_dir


RUN_FIELDS = {"mode": str, "base": dict, "data": dict, "tag_names": list, "new_token_ids": list,
              "number_text_tokens": int, "versions": dict}


def _check_run_info(info, run_dir: Path) -> dict:
    """The fields of ``run.json`` an export reads, each present with its type (a damaged file is one error)."""
    bad = [k for k, kind in RUN_FIELDS.items() if not isinstance(info, dict) or not isinstance(info.get(k), kind)]
    if not bad and not all(isinstance(info["base"].get(k), str) for k in ("dir", "fingerprint")):
        bad = ["base.dir", "base.fingerprint"]
    if bad:
        raise UserError(f"{run_dir / RUN_INFO_FILE}: missing or malformed {', '.join(bad)}; is this a tagtune "
                        "training run?")
    return info


def _check_out_dir(out_dir: Path, overwrite: bool, protected: dict[str, Path]) -> None:
    """``out_dir`` can be written, holds nothing an export would destroy, and is outside ``protected``."""
    check_writable(out_dir, folder=True, param="out_dir")
    target = out_dir.resolve()
    for what, folder in protected.items():
        folder = folder.resolve()
        if target == folder or folder in target.parents or target in folder.parents:
            raise UserError(f"{out_dir} overlaps {what} {folder}; export to a folder outside it", params=("out_dir",))
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return
    if not overwrite:
        raise UserError(f"{out_dir} is not empty; choose another folder, or overwrite an earlier export",
                        params=("out_dir", "overwrite"))
    if not _is_export(out_dir):
        raise UserError(f"{out_dir} is not empty and is not a tagtune export (no valid {PROVENANCE_FILE}); it is "
                        "left alone: choose another folder", params=("out_dir",))


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` was written by ``export`` (and so may be replaced whole)."""
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(provenance, dict) and provenance.get("format") in FORMATS.values()


ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ADAPTER_META_FILE, ADAPTER_CARD_FILE)  # rewritten


def _export_adapter(info: dict, weights: Path, out_dir: Path) -> None:
    """The run's adapter in PEFT's format (older runs' unprefixed keys included) with its base recorded,
    a model card, and the rest of the weights folder (tokenizer, tags, start rows) as it is."""
    for item in weights.iterdir():
        if item.name not in ADAPTER_FILES:
            _copy(item, out_dir / item.name)
    lora.rewrite_adapter(weights, out_dir, base_model=info["base"]["dir"])


def _copy(src: Path, dst: Path) -> None:
    """Copy a file (flushed to disk before the folder is published) or a folder."""
    if src.is_dir():
        shutil.copytree(src, dst)
        return
    shutil.copy2(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _base_dir(info: dict) -> Path:
    base = Path(info["base"]["dir"])
    if not base.is_dir():
        raise UserError(f"base checkpoint folder {base} (recorded in run.json) not found")
    found = folder_fingerprint(base)
    if found != info["base"]["fingerprint"]:
        raise UserError(f"{base} changed since training (fingerprint {found}, run has {info['base']['fingerprint']})")
    return base


def merged_state(info: dict, base_dir: Path, weights: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(official-key state dict, grown ModelConfig or ModelConfigV2) of a run's weights folder."""
    if info["mode"] == "lora":
        gpt, cfg = load_adapter_model(base_dir, weights)
        return lora.merge(gpt), cfg
    cfg = read_model_config(base_dir)
    cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, number_text_tokens=info["number_text_tokens"]))
    return read_state_dict(weights / FULL_WEIGHTS_FILE), cfg


def official_shapes(gpt_config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``gpt.pth`` for this GPT config (either family; built on the meta device)."""
    return {k: tuple(v.shape) for k, v in build_gpt(gpt_config).state_dict().items()}


def _export_merged(info: dict, base_dir: Path, weights: Path, out_dir: Path, dtype: torch.dtype) -> None:
    state, cfg = merged_state(info, base_dir, weights)
    expected = official_shapes(cfg.gpt)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        bad = sorted(set(got) ^ set(expected)) + [k for k in got if k in expected and got[k] != expected[k]]
        raise RuntimeError(f"merged weights do not match the official layout: {bad[:8]}")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_pth(out_dir / GPT_FILE, state)
    cfg = dataclasses.replace(cfg, gpt_checkpoint=GPT_FILE,
                              dataset=dataclasses.replace(cfg.dataset, bpe_model=TOKENIZER_FILE))
    write_config(out_dir, cfg)
    atomic_write_bytes(out_dir / TOKENIZER_FILE, (weights / TOKENIZER_FILE).read_bytes())
    atomic_write_bytes(out_dir / TAGS_FILE, (weights / TAGS_FILE).read_bytes())
    if (weights / START_ROWS_FILE).is_file():  # the untrained tag rows: lets `tagtune eval` rebuild the start
        atomic_write_bytes(out_dir / START_ROWS_FILE, (weights / START_ROWS_FILE).read_bytes())
    carry_over(base_dir, out_dir, read_model_config(base_dir))


def _provenance(info: dict, run_dir: Path, weights: Path, dtype: str, adapter_only: bool) -> dict:
    meta = read_adapter_meta(weights)
    meta = meta if isinstance(meta, dict) else {}
    return {
        "format": FORMATS["adapter" if adapter_only else "merged"],
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
