"""The run folder: what it holds, how it describes itself, and how a run restarts from it.

    RUN_DIR/
      run.json             data manifest hash, base checkpoint fingerprint, tags, token ids, versions
      train_config.yaml    the resolved recipe
      bpe.model, tags.json the extended tokenizer and tag set the run trained with
      checkpoints/         resumable checkpoints (see state.py) and LATEST
      tag_init.safetensors the tag rows before training (copied into weights folders: eval grows the base
                           with them)
      best/, last/         release weights: a PEFT adapter folder (or merged weights in full mode)
      metrics.jsonl, metrics.csv, loss_curve.png, tensorboard/, samples/
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from tagtune import lora
from tagtune.train import state as ts
from tagtune.atomic import atomic_write_bytes, atomic_write_text, publish_folder
from tagtune.checkpoint import folder_fingerprint, save_safetensors
from tagtune.errors import UserError
from tagtune.loaders import read_run_info
from tagtune.train.config import TrainConfig
from tagtune.folders import (ADAPTER_META_FILE, BEST_DIR as BEST, FULL_WEIGHTS_FILE as FULL_WEIGHTS, LAST_DIR as LAST, RECIPE_FILE as RECIPE,
                             RUN_INFO_FILE as RUN_INFO, SAMPLES_DIR as SAMPLES, START_ROWS_FILE as START_ROWS,
                             TAGS_FILE as TAGS, TOKENIZER_FILE as TOKENIZER)

log = logging.getLogger(__name__)



def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from tagtune import __version__

    return {"tagtune": __version__, "torch": torch.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def start(run_dir: Path, config: TrainConfig, data, model_cfg, new_ids: list[int], world: int) -> None:
    """Create RUN_DIR and write its self-description (refuses to overwrite an earlier run)."""
    if (run_dir / RUN_INFO).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"dir": str(Path(data.data_dir).resolve()), "manifest_hash": data.manifest_hash,
                 "counts": data.manifest.get("counts")},
        "base": {"dir": str(data.base_dir), "fingerprint": folder_fingerprint(data.base_dir),
                 "number_text_tokens": model_cfg.gpt.number_text_tokens - len(new_ids)},
        "tag_names": data.tag_names,
        "new_token_ids": new_ids,
        "number_text_tokens": model_cfg.gpt.number_text_tokens,
        "mode": config.lora.mode,
        "processes": world,
        "versions": _versions(),
    }
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=1, ensure_ascii=False))
    atomic_write_text(run_dir / RECIPE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_bytes(run_dir / TOKENIZER, Path(data.tokenizer_path).read_bytes())
    atomic_write_bytes(run_dir / TAGS, Path(data.tags_path).read_bytes())


def weights_meta(data, model_cfg, new_ids: list[int], config: TrainConfig) -> dict:
    """What a weights folder records about itself (read back by ``loaders.load_adapter_model``)."""
    return {"tag_names": data.tag_names, "new_token_ids": new_ids, "mode": config.lora.mode,
            "number_text_tokens": model_cfg.gpt.number_text_tokens,
            "base_fingerprint": folder_fingerprint(data.base_dir), "data_manifest_hash": data.manifest_hash}


def save_weights(gpt, folder: Path, meta: dict, data, config: TrainConfig) -> None:
    """Write release weights to ``folder``, replacing it whole (staged beside it, then renamed)."""
    with publish_folder(folder) as staged:
        write_weights(gpt, staged, meta, data.tokenizer_path, data.tags_path, config.lora.mode,
                      folder.parent / START_ROWS)


def write_weights(gpt, folder: Path, meta: dict, tokenizer: Path, tags: Path, mode: str,
                  start_rows: Path | None = None) -> None:
    files = {TOKENIZER: tokenizer, TAGS: tags}
    if start_rows is not None and start_rows.is_file():
        files[START_ROWS] = start_rows
    if mode == "lora":
        lora.save_adapter(gpt, folder, meta, files)
        return
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / FULL_WEIGHTS, lora.merge(gpt))
    atomic_write_text(folder / ADAPTER_META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    for name, src in files.items():
        atomic_write_bytes(folder / name, Path(src).read_bytes())


def save_checkpoint(accel, run_dir: Path, gpt, optimizer, scheduler, progress: ts.Progress, meta: dict,
                    data, config: TrainConfig) -> None:
    """A resumable checkpoint of every process's state; all processes must call it."""
    step, main = progress.step, accel.is_main_process
    staged = ts.staging_dir(run_dir, step)
    if main:
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
    accel.wait_for_everyone()
    ts.write_rng(staged, accel.process_index)
    accel.wait_for_everyone()
    if main:
        kept = [s for s in progress.kept if s != step] + [step]
        drop, progress.kept = kept[: -config.eval.keep_last], kept[-config.eval.keep_last :]
        write_weights(gpt, staged / ts.WEIGHTS, meta | {"step": step}, data.tokenizer_path, data.tags_path,
                      config.lora.mode, run_dir / START_ROWS)
        ts.write_state(staged, lora.trainable_state(gpt), optimizer, scheduler, progress)
        ts.publish(run_dir, step)
        for old in drop:
            shutil.rmtree(ts.checkpoint_dir(run_dir, old), ignore_errors=True)
    accel.wait_for_everyone()


def restore(run_dir: Path, gpt, optimizer, scheduler, rank: int, config: TrainConfig, data) -> ts.Progress:
    """Load the last complete checkpoint into the freshly built run; a run without one starts at step 0."""
    info = read_run_info(run_dir)
    if info["data"]["manifest_hash"] != data.manifest_hash:
        raise UserError(f"{run_dir} was trained on other data (manifest hash {info['data']['manifest_hash']}, "
                        f"now {data.manifest_hash}); cannot resume")
    recorded = yaml.safe_load((run_dir / RECIPE).read_text(encoding="utf-8"))
    if recorded != config.to_dict():
        log.warning("%s: the recipe differs from the one the run started with; resuming with the new one", run_dir)
    folder = ts.latest_checkpoint(run_dir)
    if folder is None:
        log.info("%s has no complete checkpoint yet: starting from step 0", run_dir)
        return ts.Progress()
    trainable, optim_state, sched_state, progress, rng = ts.read_checkpoint(folder, rank)
    ts.load_trainable(gpt, trainable, folder)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(sched_state)
    torch.set_rng_state(rng)
    log.info("resuming %s from step %d", run_dir, progress.step)
    return progress
