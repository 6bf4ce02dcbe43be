"""The GPT the fast synthesis path decodes with: a reduced-precision copy of the fp32 model.

Decoding one code reads every GPT weight once (~1.9 GB in fp32 for v1.5), so on a CPU its speed is set by
bytes per token, not FLOPs. Hence:

* "int8": the backbone's Conv1D layers become ``nn.Linear`` and are quantised dynamically (int8 weights,
  activations quantised per call), as is ``mel_head`` — a quarter of the bytes.
* "bf16" / "fp16": the backbone runs in that dtype behind a casting wrapper; embeddings, norms and heads
  stay fp32. fp16 is for GPUs only.

Every reduced path is checked with ``evaluate.quality.teacher_forced_quality`` (top-1 agreement and mel NLL
vs fp32). The names of the precisions and what "auto" means live in ``tagtune.precision``.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tagtune.precision import FLOAT_DTYPES, PRECISIONS


class CastBackbone(nn.Module):
    """Runs a GPT2Backbone in a reduced float dtype; takes and returns fp32 hidden states."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = backbone.to(dtype)
        self.dtype = dtype

    def forward(self, x, key_mask=None, cache=None):
        return self.inner(x.to(self.dtype), key_mask=key_mask, cache=cache).float()

    def new_cache(self, batch: int, max_len: int, **kwargs):
        return self.inner.new_cache(batch, max_len, **kwargs)


def conv1d_to_linear(module: nn.Module) -> nn.Module:
    """Replace every transformers Conv1D (weight (in, out)) by an equal nn.Linear (weight (out, in))."""
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            nx, nf = child.weight.shape
            linear = nn.Linear(nx, nf, device=child.weight.device, dtype=child.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                linear.bias.copy_(child.bias)
            setattr(module, name, linear)
        else:
            conv1d_to_linear(child)
    return module


def quantize_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every nn.Linear in ``module`` (in place)."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


@torch.no_grad()
def prepare_gpt(gpt: nn.Module, precision: str) -> nn.Module:
    """A copy of the fp32 UnifiedVoice whose decode path runs in ``precision`` (the original is untouched)."""
    fast = copy.deepcopy(gpt).eval()
    if precision == "fp32":
        return fast
    if precision in FLOAT_DTYPES:
        fast.gpt = CastBackbone(fast.gpt, FLOAT_DTYPES[precision])
        return fast
    if precision == "int8":
        conv1d_to_linear(fast.gpt)
        quantize_int8(fast.gpt)
        fast.mel_head = quantize_int8(nn.Sequential(fast.mel_head))[0]
        return fast
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
