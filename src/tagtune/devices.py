"""The devices tagtune runs on, and what "auto" means: one answer for every command.

"auto" is the best device this process can use, chosen as accelerate chooses: the CUDA device of this process
(``cuda:LOCAL_RANK`` under a launcher, else the current one), then Apple's MPS, then the CPU. A named device is
checked before any model loads, so ``cuda`` on a CPU-only build of torch is one line saying so, not a traceback
from deep inside the first ``.to(device)``.
"""

from __future__ import annotations

import os

import torch

from tagtune.errors import UserError

AUTO = "auto"
DEVICE_HELP = ("auto (the best available: this process's CUDA device, else Apple MPS, else the CPU), cpu, cuda, "
               "cuda:N or mps")


class DeviceError(UserError, ValueError):
    """A device name that does not exist, or a device this machine or this build of torch lacks."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def best_device() -> torch.device:
    """This process's accelerator (the launcher's local rank picks among several GPUs), else the CPU."""
    if torch.cuda.is_available():
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank is not None and local_rank.isdigit() else torch.cuda.current_device()
        return torch.device("cuda", index % torch.cuda.device_count())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = AUTO) -> torch.device:
    """"auto" (or None) -> ``best_device()``; any other name is parsed and checked to exist on this machine."""
    if device is None or device == AUTO:
        return best_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; use {DEVICE_HELP}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this build of torch has no CUDA support (torch " + torch.__version__ + ")"
                   if torch.version.cuda is None else "no CUDA device is visible to this process")
            raise DeviceError(f"device {device!r} asked for, but {why}; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    elif resolved.type == "mps" and not _mps_available():
        raise DeviceError(f"device {device!r} asked for, but Apple MPS is not available here; use cpu or auto")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r} is not one tagtune runs on; use {DEVICE_HELP}")
    return resolved
