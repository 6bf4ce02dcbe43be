"""The precisions tagtune runs in, and what "auto" means: one vocabulary for training and synthesis.

"auto" picks the fastest precision whose quality was measured to hold on that device: fp32 on a CPU, bf16 on
a GPU that supports it, fp16 on an older GPU. Reduced precision on a CPU is opt-in: measured against fp32
(teacher-forced, BENCHMARKS.md), int8 keeps the mel NLL within 0.2 % but agrees on the top-1 code only 97 %
(trained tiny model) / 80-83 % (full-size random init), below the 98 % we require of a default; bf16 agrees
99.5 % / 95 % and is not faster than fp32 on a CPU without AMX.
"""

from __future__ import annotations

import torch

from tagtune.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")  # int8 is for decoding only


class PrecisionError(UserError, ValueError):
    """A precision that does not exist or does not run on the chosen device."""


def resolve_precision(precision: str, device, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """"auto" -> this device's default; checks that the choice is one of ``allowed`` and runs on ``device``."""
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in allowed:
        raise PrecisionError(f"precision must be one of {allowed} or 'auto', got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError("fp16 is for GPUs; on a CPU use fp32, bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 dynamic quantisation runs on the CPU only; on a GPU use fp16 or bf16")
    return precision
