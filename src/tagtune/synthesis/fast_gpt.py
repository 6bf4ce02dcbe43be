"""The GPT the fast synthesis path decodes with: a reduced-precision copy of the fp32 model.

Decoding one code reads every GPT weight once (~1.9 GB in fp32 for v1.5), so on a CPU its speed is set by
bytes per token, not FLOPs. Hence:

* "int8" (the CPU default): the backbone's Conv1D layers become ``nn.Linear`` and are quantised dynamically
  (int8 weights with one scale per output channel, activations quantised per call), as is ``mel_head`` — a
  quarter of the bytes. The float linears are quantised one at a time from the original's weights, so
  building the copy never holds a second fp32 backbone.
* "bf16" / "fp16": the backbone runs in that dtype behind a casting wrapper; embeddings, norms and heads
  stay fp32. fp16 is for GPUs only.

The latent pass after decoding (the vocoder's input) is compute-bound, not bandwidth-bound: on a CPU with
native bf16 arithmetic it runs ~3-4x faster on a bf16 copy of the backbone (``latent_model``) than in fp32.

Every reduced path is checked with ``evaluate.quality`` (KL and mel NLL against fp32, teacher-forced). The
names of the precisions, what "auto" means and the measured numbers behind it live in ``tagtune.precision``.
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
    """Dynamic int8 quantisation (per-output-channel weight scales) of every nn.Linear in ``module``, in place."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def _int8_linear(layer: nn.Module) -> nn.Module:
    """A dynamically quantised copy of one Conv1D or nn.Linear (the layer itself is left as it is)."""
    if isinstance(layer, Conv1D):
        nx, nf = layer.weight.shape
        linear = nn.Linear(nx, nf, device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(layer.weight.t())
            linear.bias.copy_(layer.bias)
    else:
        linear = copy.deepcopy(layer)
    return quantize_int8(nn.Sequential(linear))[0]


def _int8_copy(gpt: nn.Module) -> nn.Module:
    """A copy of ``gpt`` whose backbone linears and ``mel_head`` are int8, quantised one layer at a time from the
    original's weights (those are never copied whole); the rest (embeddings, conditioning, norms) is copied."""
    def quantised(name: str, module: nn.Module) -> bool:
        return name == "mel_head" or (name.startswith("gpt.") and isinstance(module, (Conv1D, nn.Linear)))

    layers = {name: m for name, m in gpt.named_modules() if quantised(name, m)}
    shared = {id(p): p for m in layers.values() for p in m.parameters()}  # deepcopy takes these as they are
    fast = copy.deepcopy(gpt, memo=shared).eval()
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(fast.get_submodule(parent) if parent else fast, child, _int8_linear(layer))
    return fast


@torch.no_grad()
def latent_model(gpt: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A UnifiedVoice for the latent pass whose backbone is a ``dtype`` copy behind :class:`CastBackbone`.

    Everything outside the backbone (embeddings, conditioning, final norm, heads) is shared with ``gpt``, and
    the copy is made one tensor at a time, so building it never holds a second fp32 backbone.
    """
    backbone = {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in gpt.gpt.parameters()}
    shared = {id(t): t for name, t in [*gpt.named_parameters(), *gpt.named_buffers()] if not name.startswith("gpt.")}
    model = copy.deepcopy(gpt, memo=shared | backbone).eval()
    model.gpt = CastBackbone(model.gpt, dtype)
    return model


@torch.no_grad()
def prepare_gpt(gpt: nn.Module, precision: str) -> nn.Module:
    """A copy of the fp32 UnifiedVoice whose decode path runs in ``precision`` (the original is untouched)."""
    if precision == "int8":
        return _int8_copy(gpt)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    fast = copy.deepcopy(gpt).eval()
    if precision in FLOAT_DTYPES:
        fast.gpt = CastBackbone(fast.gpt, FLOAT_DTYPES[precision])
    return fast
