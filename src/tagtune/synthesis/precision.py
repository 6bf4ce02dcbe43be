"""Fast synthesis: reduced-precision GPT decoding, batched latent pass and vocoder, and the quality checks.

Decoding one code reads every GPT weight once (~1.9 GB in fp32 for v1.5), so on a CPU its speed is set by
bytes per token, not FLOPs. Hence:

* "int8": the backbone's Conv1D layers become ``nn.Linear`` and are quantised dynamically (int8 weights,
  activations quantised per call), as is ``mel_head`` — a quarter of the bytes.
* "bf16" / "fp16": the backbone runs in that dtype behind a casting wrapper; embeddings, norms and heads
  stay fp32. fp16 is for GPUs only.

Every reduced path is checked with :func:`teacher_forced_quality` (top-1 agreement and mel NLL vs fp32).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from tagtune.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError, ValueError):
    """A precision that does not exist or does not run on the chosen device."""


def resolve_precision(precision: str, device) -> str:
    """"auto" -> fp16 on CUDA, fp32 on CPU; checks that the choice runs on ``device``.

    CPU reduced precision is opt-in: measured against fp32 (teacher-forced, BENCHMARKS.md), int8 keeps the
    mel NLL within 0.2 % but agrees on the top-1 code only 97 % (trained tiny model) / 80-83 % (full-size
    random init), below the 98 % we require of a default; bf16 agrees 99.5 % / 95 % and is not faster than
    fp32 on a CPU without AMX.
    """
    device = torch.device(device)
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS} or 'auto', got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError("fp16 decoding is for GPUs; on a CPU use bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 dynamic quantisation runs on the CPU only; on a GPU use fp16 or bf16")
    return precision


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


# ------------------------------------------------------------------------------------ batched stages


def _groups(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped ``size`` at a time in order of length, so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def _pad_rows(rows: list[list[int] | torch.Tensor], value: int, device) -> torch.Tensor:
    """Right-pad id rows to a (B, L) long tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.as_tensor(r, dtype=torch.long, device=device)
    return out


@torch.no_grad()
def batched_latents(gpt, conds: torch.Tensor, sentences: list[list[int]], codes: list[torch.Tensor],
                    batch_size: int) -> list[torch.Tensor]:
    """Vocoder latents (N_i, D) per sentence, several sentences per forward (padding hidden by masks)."""
    cfg, device = gpt.cfg, conds.device
    out: list[torch.Tensor] = [conds.new_zeros(0, conds.shape[-1])] * len(sentences)
    live = [i for i, c in enumerate(codes) if len(c)]
    for group in _groups([len(codes[i]) for i in live], batch_size):
        idx = [live[g] for g in group]
        text = _pad_rows([sentences[i] for i in idx], cfg.stop_text_token, device)
        mel = _pad_rows([codes[i] for i in idx], cfg.stop_mel_token, device)
        text_lens = torch.tensor([len(sentences[i]) for i in idx], device=device)
        code_lens = torch.tensor([len(codes[i]) for i in idx], device=device)
        lat = gpt.latents(conds.expand(len(idx), -1, -1), text, mel, text_lens, code_lens)  # (B, N, D)
        for b, i in enumerate(idx):
            out[i] = lat[b, : len(codes[i])]
    return out


@torch.no_grad()
def vocode_joined(vocoder, latents: list[torch.Tensor], speaker: torch.Tensor) -> list[torch.Tensor]:
    """Waveforms (N_i · hop,) in [-1, 1] per latent sequence (N_i, D), from ONE vocoder call.

    The sentences are joined in time (as the official ``infer_fast`` joins pairs), so each boundary is
    vocoded with its neighbours as context. Padding a batch instead would let the zero padding reach
    ~0.7 s back into a shorter row through BigVGAN's receptive field.
    """
    hop = vocoder.hop_length
    live = [lat for lat in latents if len(lat)]
    if not live:
        return [speaker.new_zeros(0) for _ in latents]
    wav = vocoder(torch.cat(live)[None], speaker=speaker)[0, 0]  # (sum N_i · hop,)
    pieces = iter(wav.split([len(lat) * hop for lat in live]))
    return [next(pieces) if len(lat) else speaker.new_zeros(0) for lat in latents]


# ----------------------------------------------------------------------------------------- quality


@torch.no_grad()
def teacher_forced_quality(reference, candidate, conds: torch.Tensor, text_ids: torch.Tensor,
                           codes: torch.Tensor) -> dict[str, float]:
    """Compare two GPTs on given codes (B, N) for one text (B, L): top-1 agreement and mel NLL of each.

    Positions are the training ones; every mel target position (codes and the stop) counts.
    """
    B, N = codes.shape
    lens = torch.full((B,), text_ids.shape[1], device=codes.device)
    wav_lens = torch.full((B,), N * reference.cfg.mel_length_compression, device=codes.device)
    results = []
    for model in (reference, candidate):
        out = model.logits(None, text_ids, lens, codes, wav_lens, conds=conds.expand(B, -1, -1))
        results.append((out.mel_logits.float(), out.mel_targets))
    (ref_logits, targets), (cand_logits, _) = results
    agree = (ref_logits.argmax(1) == cand_logits.argmax(1)).float().mean().item()
    return {"top1_agreement": agree, "nll_reference": F.cross_entropy(ref_logits, targets).item(),
            "nll_candidate": F.cross_entropy(cand_logits, targets).item()}
