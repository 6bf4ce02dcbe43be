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
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from tagtune import lora
from tagtune.atomic import atomic_write_bytes, atomic_write_text, publish_folder, sweep_stale, sweep_temp_files
from tagtune.checkpoint import CheckpointError, save_safetensors
from tagtune.errors import UserError
from tagtune.folders import ADAPTER_META_FILE
from tagtune.folders import BEST_DIR as BEST
from tagtune.folders import FULL_WEIGHTS_FILE as FULL_WEIGHTS
from tagtune.folders import LAST_DIR as LAST
from tagtune.folders import RECIPE_FILE as RECIPE
from tagtune.folders import RUN_INFO_FILE as RUN_INFO
from tagtune.folders import START_ROWS_FILE as START_ROWS
from tagtune.folders import TAGS_FILE as TAGS
from tagtune.folders import TOKENIZER_FILE as TOKENIZER
from tagtune.loaders import read_run_info
from tagtune.train import state as ts
from tagtune.train.config import TrainConfig, TrainConfigError, read_recipe_yaml
from tagtune.train.metrics import METRICS_JSONL, read_records

log = logging.getLogger(__name__)

# recipe keys that decide which tensors train and their shapes: a resumed run must keep them
SHAPE_KEYS = (("lora", "mode"), ("lora", "rank"), ("lora", "targets"), ("lora", "layers"),
              ("lora", "train_conditioning"))


def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from tagtune import __version__

    return {"tagtune": __version__, "torch": torch.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


class RunExistsError(UserError):
    """A fresh run asked for in a folder that already holds one."""


def start(run_dir: Path, config: TrainConfig, data, model_cfg, new_ids: list[int], world: int) -> None:
    """Create RUN_DIR and write its self-description (refuses to overwrite an earlier run).

    ``run.json`` is written last: a folder holding it describes a run completely, and a start killed before
    it can simply be started again.
    """
    if (run_dir / RUN_INFO).exists():
        raise RunExistsError(f"{run_dir} already holds a run; resume it or choose another output folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"dir": str(Path(data.data_dir).resolve()), "manifest_hash": data.manifest_hash,
                 "counts": data.manifest.get("counts")},
        "base": {"dir": str(data.base_dir), "fingerprint": data.base_fingerprint,
                 "number_text_tokens": model_cfg.gpt.number_text_tokens - len(new_ids)},
        "tag_names": data.tag_names,
        "new_token_ids": new_ids,
        "number_text_tokens": model_cfg.gpt.number_text_tokens,
        "mode": config.lora.mode,
        "processes": world,
        "versions": _versions(),
    }
    atomic_write_text(run_dir / RECIPE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_bytes(run_dir / TOKENIZER, Path(data.tokenizer_path).read_bytes())
    atomic_write_bytes(run_dir / TAGS, Path(data.tags_path).read_bytes())
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=1, ensure_ascii=False))


def weights_meta(data, model_cfg, new_ids: list[int], config: TrainConfig) -> dict:
    """What a weights folder records about itself (read back by ``loaders.load_adapter_model``)."""
    return {"tag_names": data.tag_names, "new_token_ids": new_ids, "mode": config.lora.mode,
            "number_text_tokens": model_cfg.gpt.number_text_tokens,
            "base_fingerprint": data.base_fingerprint, "data_manifest_hash": data.manifest_hash}


def save_weights(gpt, folder: Path, meta: dict, data, config: TrainConfig) -> None:
    """Write release weights to ``folder``, replacing it whole (staged beside it, then renamed)."""
    with publish_folder(folder) as staged:
        write_weights(gpt, staged, meta, data.tokenizer_path, data.tags_path, config.lora.mode,
                      folder.parent / START_ROWS, base_model=str(data.base_dir))


def write_weights(gpt, folder: Path, meta: dict, tokenizer: Path, tags: Path, mode: str,
                  start_rows: Path | None = None, base_model: str | None = None) -> None:
    files = {TOKENIZER: tokenizer, TAGS: tags}
    if start_rows is not None and start_rows.is_file():
        files[START_ROWS] = start_rows
    if mode == "lora":
        lora.save_adapter(gpt, folder, meta, files, base_model=base_model)  # PEFT's base_model_name_or_path
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
    ts.write_rng(staged, accel.process_index, accel.device)
    accel.wait_for_everyone()
    if main:
        kept = [s for s in progress.kept if s != step] + [step]
        drop, progress.kept = kept[: -config.eval.keep_last], kept[-config.eval.keep_last :]
        write_weights(gpt, staged / ts.WEIGHTS, meta | {"step": step}, data.tokenizer_path, data.tags_path,
                      config.lora.mode, run_dir / START_ROWS, base_model=str(data.base_dir))
        ts.write_state(staged, lora.trainable_state(gpt), optimizer, scheduler, progress)
        ts.publish(run_dir, step)
        for old in drop:
            shutil.rmtree(ts.checkpoint_dir(run_dir, old), ignore_errors=True)
    accel.wait_for_everyone()


def check_resume(run_dir: Path, config: TrainConfig, data, rank: int, world: int) -> ts.Checkpoint | None:
    """Check that RUN_DIR can continue with this recipe, data and process count, and read its newest complete
    checkpoint (None: the run has none yet and starts at step 0). Reads only: nothing is written."""
    info = read_run_info(run_dir)
    trained_on = _recorded(info, run_dir, "data", "manifest_hash")
    trained_from = _recorded(info, run_dir, "base", "fingerprint")
    if trained_on != data.manifest_hash:
        raise UserError(f"{run_dir} was trained on other data (manifest hash {trained_on}, now {data.manifest_hash}); "
                        "cannot resume")
    if trained_from != data.base_fingerprint:
        raise UserError(f"{run_dir} was trained from another base model (fingerprint {trained_from}, now "
                        f"{data.base_fingerprint}); cannot resume")
    processes = info.get("processes", 1)  # a dict: _recorded checked it
    if processes != world:
        raise UserError(f"{run_dir} was trained with {processes} process(es), this resume has {world}: the "
                        "global batch and the data order would change; resume with the same number of processes")
    _check_recipe(run_dir, config)
    if (run_dir / METRICS_JSONL).is_file():
        read_records(run_dir / METRICS_JSONL)  # damage is reported now, before anything is written
    folder = ts.latest_checkpoint(run_dir)
    if folder is None:
        log.info("%s has no complete checkpoint yet: starting from step 0", run_dir)
        return None
    return ts.read_checkpoint(folder, rank)


def _recorded(info, run_dir: Path, section: str, key: str):
    """``info[section][key]`` of a run.json, or an error naming the file and the key."""
    part = info.get(section) if isinstance(info, dict) else None
    value = part.get(key) if isinstance(part, dict) else None
    if value is None:
        raise UserError(f"{run_dir / RUN_INFO}: lacks {section}.{key} (not written by tagtune train?)")
    return value


def _check_recipe(run_dir: Path, config: TrainConfig) -> None:
    """The recipe may change the schedule or learning rate on resume, never the shapes of what trains."""
    path = run_dir / RECIPE
    if not path.is_file():
        raise UserError(f"{path}: not found ({run_dir} is not a complete training run)")
    recorded = read_recipe_yaml(path)
    now = config.to_dict()
    for section, key in SHAPE_KEYS:
        before = recorded.get(section, {}).get(key) if isinstance(recorded, dict) and isinstance(
            recorded.get(section), dict) else None
        if before != now[section][key]:
            raise TrainConfigError(f"{path}: the run trained with {section}.{key} {before!r}, the recipe now says "
                                   f"{now[section][key]!r}; a resumed run keeps the shapes of its checkpoint, so "
                                   f"{section}.{key} must stay {before!r}")
    if recorded != now:
        log.warning("%s: the recipe differs from the one the run started with; resuming with the new one", run_dir)


def restore(gpt, optimizer, scheduler, checkpoint: ts.Checkpoint, device="cpu") -> ts.Progress:
    """Load a checkpoint read by ``check_resume`` into the freshly built run."""
    ts.load_trainable(gpt, checkpoint.trainable, checkpoint.folder)
    try:
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{checkpoint.folder / ts.STATE_TENSORS}: the optimizer state does not fit the "
                              f"run's model ({' '.join(str(e).split())})") from None
    ts.set_rng_state(checkpoint.rng, device)
    log.info("resuming %s from step %d", checkpoint.folder.parent.parent, checkpoint.progress.step)
    return checkpoint.progress


def tidy(run_dir: Path, resumed_from: Path | None) -> None:
    """Remove what killed runs left half-written: temporary files and staging folders (main process, before
    this run writes anything), and point LATEST at the checkpoint the run resumes from. Complete files and
    folders are never touched."""
    if resumed_from is not None:
        ts.point_latest(run_dir, resumed_from)
    removed = sweep_temp_files(run_dir) + ts.sweep_staging(run_dir)
    for name in (BEST, LAST):
        sweep_stale(run_dir / name)
    if removed:
        log.info("removed %d temporary file(s)/folder(s) left by an interrupted run", len(removed))
