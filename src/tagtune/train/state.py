"""Resumable training checkpoints inside a run folder.

Layout of ``RUN_DIR/checkpoints/step-000120/``:

    weights/             the trainable weights in their release format (PEFT adapter folder, or merged
                         official keys in full fine-tuning), loadable on their own
    state.safetensors    trainable tensors by wrapped name + AdamW moments (``optim.<i>.<name>``)
    state.json           step, data position, scheduler, optimizer groups, run bookkeeping
    rng-<rank>.safetensors  torch RNG states of every process (dropout, LoRA dropout): ``cpu``, and ``cuda``
                         (its GPU's generator, which dropout on a GPU draws from) when it trains on one

A checkpoint is written into a hidden temporary folder (``.step-000120.tmp``) and renamed into place, then
``LATEST`` is replaced atomically: a SIGKILL at any moment leaves every earlier checkpoint intact. A step
folder is complete when it holds ``state.json``, the file written last. Resuming takes the newest complete
step folder, found by scanning them; ``LATEST`` is a pointer for people and tools, and a missing, stale or
damaged one changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from tagtune.checkpoint import CheckpointError, atomic_write_text, read_state_dict, save_safetensors
from tagtune.folders import CHECKPOINTS_DIR as CHECKPOINTS

log = logging.getLogger(__name__)

LATEST = "LATEST"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
WEIGHTS = "weights"
STEP_FORMAT = "step-{:06d}"
STEP_RE = re.compile(r"step-(\d{6,})")
STAGING_RE = re.compile(r"\.step-\d{6,}\.tmp")


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


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete step folders of a run (those holding ``state.json``), oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = STEP_RE.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        if (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
        else:
            log.warning("%s: incomplete checkpoint (no %s); skipped", path, STATE_JSON)
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None when the run has none."""
    folders = complete_checkpoints(run_dir)
    if not folders:
        return None
    newest = folders[-1]
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    try:
        named = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = None
    if named != newest.name:
        log.warning("%s names %r, but the newest complete checkpoint is %s: resuming from that", pointer, named,
                    newest.name)
    return newest


def sweep_staging(run_dir: str | Path) -> list[Path]:
    """Remove checkpoint staging folders a killed run left behind (call before this run writes any)."""
    folder = Path(run_dir) / CHECKPOINTS
    stale = [p for p in folder.iterdir() if p.is_dir() and STAGING_RE.fullmatch(p.name)] if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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


def rng_state(device) -> dict[str, torch.Tensor]:
    """The generators a process draws from: the CPU's, and its GPU's when it trains on one."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state: dict[str, torch.Tensor], device) -> None:
    """Put back what ``rng_state`` saved. A checkpoint written on another kind of device resumes, but dropout
    then draws other masks than the uninterrupted run would have: that is said once."""
    torch.set_rng_state(state["cpu"])
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))
    elif on_cuda or "cuda" in state:
        log.warning("the checkpoint was written %s and this run trains %s: its GPU random state cannot be "
                    "restored, so dropout differs from an uninterrupted run", "on a GPU" if "cuda" in state
                    else "without a GPU", "on a GPU" if on_cuda else "without one")


def write_rng(folder: Path, rank: int, device="cpu") -> None:
    """Each process stores its own RNG states (dropout masks differ per rank)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / f"rng-{rank}.safetensors", rng_state(device))


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
    point_latest(run_dir, final)


def point_latest(run_dir: Path, folder: Path) -> None:
    """Make LATEST name ``folder`` (rewritten only when it names something else)."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    try:
        if pointer.read_text(encoding="utf-8").strip() == folder.name:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(pointer, folder.name)


@dataclass
class Checkpoint:
    """A checkpoint read back for process ``rank``: everything ``train`` needs to continue exactly."""

    folder: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    progress: Progress
    rng: dict[str, torch.Tensor]  # "cpu", and "cuda" when it was written on a GPU (rng_state)


def read_checkpoint(folder: Path, rank: int) -> Checkpoint:
    """Read a checkpoint folder; a damaged or missing file is a CheckpointError naming it."""
    payload = _read_payload(folder)
    rng_file = folder / f"rng-{rank}.safetensors"
    if not rng_file.is_file():
        raise _damaged(folder, f"{rng_file}: missing (every process of the run wrote one; resume with the same "
                               "number of processes)")
    try:
        tensors = read_state_dict(folder / STATE_TENSORS)
        rng = read_state_dict(rng_file)
    except CheckpointError as e:
        raise _damaged(folder, str(e)) from None
    if "cpu" not in rng:
        raise _damaged(folder, f"{rng_file}: holds no 'cpu' RNG state")
    trainable = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    optim = _optimizer_from_flat(tensors, payload["optimizer"])
    return Checkpoint(folder, trainable, optim, payload["scheduler"], Progress(**payload["progress"]), rng)


def _read_payload(folder: Path) -> dict:
    path = folder / STATE_JSON
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _damaged(folder, f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(folder, f"{path}: unreadable (truncated or corrupt? {e})") from None
    names = {f.name for f in fields(Progress)}
    ok = (isinstance(payload, dict) and isinstance(payload.get("progress"), dict)
          and set(payload["progress"]) == names and isinstance(payload.get("scheduler"), dict)
          and isinstance(payload.get("optimizer"), dict) and "param_groups" in payload["optimizer"])
    if not ok:
        raise _damaged(folder, f"{path}: not a tagtune checkpoint state (progress, scheduler, optimizer)")
    return payload


def _damaged(folder: Path, problem: str) -> CheckpointError:
    """The error for an unusable checkpoint, saying how to fall back to the one before it."""
    match = STEP_RE.fullmatch(folder.name)
    step = int(match.group(1)) if match else -1
    earlier = [p for p in complete_checkpoints(folder.parent.parent) if int(STEP_RE.fullmatch(p.name).group(1)) < step]
    if earlier:
        return CheckpointError(f"{problem}; delete {folder} to resume from {earlier[-1].name}")
    return CheckpointError(f"{problem}; the run has no earlier checkpoint: start it again in a new folder")


def load_trainable(model: torch.nn.Module, trainable: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved trainable tensors into ``model``; both sides must name the same tensors with the same shapes."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(trainable):
        missing, extra = sorted(set(params) - set(trainable)), sorted(set(trainable) - set(params))
        raise CheckpointError(f"{source}: trainable tensors differ from the run's model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]} (was the recipe changed before resuming?)")
    for name, p in params.items():
        if tuple(trainable[name].shape) != tuple(p.shape):
            raise CheckpointError(f"{source}: key {name} has shape {tuple(trainable[name].shape)}, the run's model "
                                  f"expects {tuple(p.shape)} (was the recipe changed before resuming?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trainable[name])
