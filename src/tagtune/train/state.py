"""Resumable training checkpoints inside a run folder.

Layout of ``RUN_DIR/checkpoints/step-000120/``:

    weights/             the trainable weights in their release format (PEFT adapter folder, or merged
                         official keys in full fine-tuning), loadable on their own
    state.safetensors    trainable tensors by wrapped name + AdamW moments (``optim.<i>.<name>``)
    state.json           step, data position, scheduler, optimizer groups, run bookkeeping
    rng-<rank>.safetensors  torch RNG state of every process (dropout, LoRA dropout)

A checkpoint is written into a hidden temporary folder and renamed into place, then ``LATEST`` is
replaced atomically: a SIGKILL at any moment leaves the previous checkpoint intact and named by LATEST.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tagtune.checkpoint import atomic_write_text, read_state_dict, save_safetensors
from tagtune.folders import CHECKPOINTS_DIR as CHECKPOINTS

LATEST = "LATEST"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
WEIGHTS = "weights"
STEP_FORMAT = "step-{:06d}"


@dataclass
class Progress:
    """Where the loop stands; restored exactly on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of ``epoch`` already consumed
    base_untagged_loss: float | None = None  # forgetting guard reference (step 0)
    best_val_loss: float | None = None
    best_step: int | None = None
    kept: list[int] = field(default_factory=list)  # steps of the checkpoints on disk, oldest first


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / STEP_FORMAT.format(step)


def staging_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f".{STEP_FORMAT.format(step)}.tmp"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder named by LATEST, or None when the run has no complete checkpoint."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / STATE_JSON).is_file() else None


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], groups: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups["param_groups"]}


def write_rng(folder: Path, rank: int) -> None:
    """Each process stores its own RNG (dropout masks differ per rank)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / f"rng-{rank}.safetensors", {"cpu": torch.get_rng_state()})


def write_state(folder: Path, trainable: dict[str, torch.Tensor], optimizer, scheduler, progress: Progress) -> None:
    """Trainable tensors, optimizer moments, scheduler and progress into ``folder`` (main process)."""
    optim_tensors, optim_json = _optimizer_to_flat(optimizer)
    tensors = {f"param.{k}": v for k, v in trainable.items()} | optim_tensors
    save_safetensors(folder / STATE_TENSORS, tensors)
    sched = scheduler.state_dict()
    sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])  # plain functions: rebuilt from the recipe
    payload = {"progress": asdict(progress), "scheduler": sched, "optimizer": optim_json}
    atomic_write_text(folder / STATE_JSON, json.dumps(payload, indent=1))


def publish(run_dir: Path, step: int) -> None:
    """Rename the staged folder of ``step`` into place, then point LATEST at it."""
    staged, final = staging_dir(run_dir, step), checkpoint_dir(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    atomic_write_text(Path(run_dir) / CHECKPOINTS / LATEST, final.name)


def read_checkpoint(folder: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict, dict, Progress, torch.Tensor]:
    """(trainable tensors, optimizer state dict, scheduler state, progress, this rank's RNG state)."""
    tensors = read_state_dict(folder / STATE_TENSORS)
    payload = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    trainable = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    optim = _optimizer_from_flat(tensors, payload["optimizer"])
    rng_file = folder / f"rng-{rank}.safetensors"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: missing (resume with the same number of processes as the run)")
    rng = read_state_dict(rng_file)["cpu"]
    return trainable, optim, payload["scheduler"], Progress(**payload["progress"]), rng


def load_trainable(model: torch.nn.Module, trainable: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved trainable tensors into ``model``; both sides must name exactly the same tensors."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(trainable):
        missing, extra = sorted(set(params) - set(trainable)), sorted(set(trainable) - set(params))
        raise RuntimeError(f"{source}: trainable tensors differ from the run's model: missing {missing[:5]}, "
                           f"unexpected {extra[:5]} (was the recipe changed before --resume?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trainable[name])
