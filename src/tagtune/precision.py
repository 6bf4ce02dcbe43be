"""The precisions tagtune runs in, and what "auto" means: one vocabulary for training and synthesis.

"auto" picks the fastest precision whose quality was measured to hold on that device: int8 for decoding on a
CPU (fp32 for training there), bf16 on a GPU that supports it, fp16 on an older GPU.

The bar for a reduced-precision decode default (``tagtune.evaluate.quality``): teacher-forced against fp32,
mean KL(fp32 || reduced) over next-code distributions <= 0.02 nats per code and mel NLL within 0.5 %. int8
(per-channel weights, dynamic activations) meets it with room to spare; measured on the demo-tuned tiny
model (60 validation clips, 6574 codes) and on full-size v1.5 with random init (2 x 100 sampled codes +
stops, 204 codes), ``python bench/bench_synth.py`` / ``evaluate.quality.teacher_forced_quality_over``:

    precision   KL nats/code (tiny / full)   NLL change (tiny / full)   top-1 agreement (tiny / full)
    int8        0.0009 / 0.0016             +0.01 % / +0.10 %          96.7 % / 80.4 %
    bf16        0.0000 / 0.0000             +0.00 % / -0.01 %          99.6 % / 97.6 %

Top-1 agreement is low on random-init weights because their next-code distributions are flat: near-ties
flip under any rounding, and sampling never sees them; KL measures what sampling sees. bf16 also passes but
reads half the bytes of fp32 where int8 reads a quarter, so int8 is the CPU default.
"""

from __future__ import annotations

import torch

from tagtune.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")  # int8 is for decoding only
CPU_DECODE_DEFAULT = "int8"  # passes the quality bar on both models (table above)


class PrecisionError(UserError, ValueError):
    """A precision that does not exist or does not run on the chosen device."""


def resolve_precision(precision: str, device, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """"auto" -> this device's default; checks that the choice is one of ``allowed`` and runs on ``device``.

    On a CPU "auto" is ``CPU_DECODE_DEFAULT`` where ``allowed`` has it (decoding), else fp32 (training).
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return CPU_DECODE_DEFAULT if CPU_DECODE_DEFAULT in allowed else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in allowed:
        raise PrecisionError(f"precision must be one of {allowed} or 'auto', got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError("fp16 is for GPUs; on a CPU use fp32, bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 dynamic quantisation runs on the CPU only; on a GPU use fp16 or bf16")
    return precision
