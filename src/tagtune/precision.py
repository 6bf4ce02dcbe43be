"""The precisions tagtune runs in, and what "auto" means: one vocabulary for training and synthesis.

"auto" picks the fastest precision whose quality was measured to hold on that device: on a CPU int8 for
decoding and, for training, bf16 autocast where the CPU has native bf16 arithmetic (AVX512_BF16 or AMX), fp32
where it has not; bf16 on a GPU that supports it, fp16 on an older GPU.

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

The bar for the CPU training default: the same 50 LoRA steps on the tiny base, bf16 autocast (matmuls in bf16;
weights, adapters, tag rows and optimizer state in fp32) against fp32, every step's loss within 1 %, their mean
gap within 0.25 % and the validation loss after the last step within 0.25 % (measured 0.34 %, 0.07 % and
0.05 %; ``tests/test_train_bf16.py``). On a 2-core AVX512_BF16 CPU it trains full-size v1.5 at 3.43x the
notebook baseline's positions/s where fp32 reaches 1.45x, at the same peak memory (``bench/bench_train.py``).
A CPU without native bf16 converts in software, slower than fp32, so fp32 stays its default. At the tiny test
model's width (128) the casts outweigh the small matmuls and bf16 trains slower than fp32 (1.1x against 3.0x
the baseline; the demo recipe pins fp32); the default is set for the released models' sizes.
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

    On a CPU "auto" is ``CPU_DECODE_DEFAULT`` where ``allowed`` has it (decoding), else (training) bf16 where
    the CPU has native bf16 arithmetic and fp32 where it has not (the module docstring says why).
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            if CPU_DECODE_DEFAULT in allowed:
                return CPU_DECODE_DEFAULT
            return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in allowed:
        raise PrecisionError(f"precision must be one of {allowed} or 'auto', got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError("fp16 is for GPUs; on a CPU use fp32, bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 dynamic quantisation runs on the CPU only; on a GPU use fp16 or bf16")
    return precision


LATENT_PRECISIONS = ("fp32", "bf16")


def resolve_latent_precision(choice: str, decode_precision: str, device) -> str:
    """The precision of the synthesis latent pass (the GPT forward that feeds the vocoder after decoding).

    "auto" is bf16 when the decode already runs reduced (not fp32) on a CPU with native bf16 arithmetic:
    there the pass is compute-bound and a bf16 backbone copy runs it ~3-4x faster, with the audio within
    ``evaluate.quality.MAX_LOG_MEL_DIFF`` of fp32 latents (``bench/bench_synth.py`` prints the figure);
    fp32 elsewhere (a GPU runs the pass in a fraction of the decode, and fp32 decoding asks for fp32 throughout).
    """
    device = torch.device(device)
    if choice == "auto":
        fast = device.type == "cpu" and decode_precision != "fp32" and cpu_has_native_bf16()
        return "bf16" if fast else "fp32"
    if choice not in LATENT_PRECISIONS:
        raise PrecisionError(f"latent precision must be one of {LATENT_PRECISIONS} or 'auto', got {choice!r}")
    return choice


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated, slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
