"""Agreement of a reduced-precision (or otherwise changed) GPT with its fp32 reference, teacher-forced.

The bar a reduced-precision decode path must meet to become a default (``QUALITY_BAR``):

* mean KL(fp32 || reduced) over next-code distributions <= 0.02 nats per code: what sampling sees;
* mel NLL on the same codes within 0.5 % of fp32's;
* top-1 agreement is reported, not required: near-ties flip under any rounding and sampling never sees them.

The stages after decoding (the latent pass, the vocoder) see no sampling: a reduced one is compared by its
audio against the fp32 audio from the same codes (``audio_difference``): the mean absolute natural-log mel
difference must stay within ``MAX_LOG_MEL_DIFF``, the mel tolerance of the official-parity fixtures (the
official code's own fp32 mels move up to 3.3e-3 across machines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

MAX_KL_NATS = 0.02  # mean KL(fp32 || reduced) per code
MAX_NLL_CHANGE = 0.005  # |NLL_reduced / NLL_fp32 - 1|
MAX_LOG_MEL_DIFF = 0.005  # mean |log-mel(reduced) - log-mel(fp32)|, nats, for the stages after decoding
LOUD_NATS = 8.0  # "loud" mel bins: within this many nats of the loudest bin


@dataclass(frozen=True)
class Quality:
    """How far a candidate's next-code distributions are from the reference's, over ``positions`` codes."""

    kl: float  # mean KL(reference || candidate), nats per code
    nll_reference: float
    nll_candidate: float
    top1_agreement: float
    positions: int

    @property
    def nll_change(self) -> float:
        """Relative NLL change of the candidate (0.004 = +0.4 %)."""
        return self.nll_candidate / self.nll_reference - 1

    @property
    def passes(self) -> bool:
        """Whether the candidate meets the bar for a default decode path."""
        return self.kl <= MAX_KL_NATS and abs(self.nll_change) <= MAX_NLL_CHANGE

    def summary(self) -> str:
        verdict = "passes" if self.passes else "fails"
        return (f"KL {self.kl:.4f} nats/code, NLL {self.nll_reference:.4f} -> {self.nll_candidate:.4f} "
                f"({self.nll_change:+.2%}), top-1 {self.top1_agreement:.2%} over {self.positions} codes: {verdict}")

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "nll_change": self.nll_change, "passes": self.passes}


def _sums(ref_logits: torch.Tensor, cand_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-batch sums (kl, nll_ref, nll_cand, agree, count) for logits (P, V) and targets (P,)."""
    ref_logp = F.log_softmax(ref_logits.double(), dim=-1)
    cand_logp = F.log_softmax(cand_logits.double(), dim=-1)
    kl = F.kl_div(cand_logp, ref_logp, log_target=True, reduction="sum")  # sum_p ref * (log ref - log cand)
    nll_ref = F.nll_loss(ref_logp, targets, reduction="sum")
    nll_cand = F.nll_loss(cand_logp, targets, reduction="sum")
    agree = (ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum()
    return torch.stack([kl, nll_ref, nll_cand, agree.double(), torch.tensor(len(targets), dtype=torch.double)])


def compare_logits(ref_logits: torch.Tensor, cand_logits: torch.Tensor, targets: torch.Tensor) -> Quality:
    """The quality measures for next-code logits (P, V) of both models on targets (P,)."""
    return _from_sums(_sums(ref_logits, cand_logits, targets))


def _from_sums(s: torch.Tensor) -> Quality:
    kl, nll_ref, nll_cand, agree, n = s.tolist()
    return Quality(kl / n, nll_ref / n, nll_cand / n, agree / n, int(n))


def _mel_logits(model, conds: torch.Tensor, text_ids: torch.Tensor, codes: torch.Tensor):
    """Mel logits (P, V) and targets (P,) at every mel target position (codes and the stop) of one text."""
    B, N = codes.shape
    lens = torch.full((B,), text_ids.shape[-1], device=codes.device)
    wav_lens = torch.full((B,), N * model.cfg.mel_length_compression, device=codes.device)
    text = text_ids.expand(B, -1) if text_ids.dim() == 2 else text_ids[None].expand(B, -1)
    out = model.logits(None, text, lens, codes, wav_lens, conds=conds.expand(B, -1, -1))
    logits = out.mel_logits.float().transpose(1, 2)  # (B, N+2, V)
    return logits.reshape(-1, logits.shape[-1]), out.mel_targets.reshape(-1)


@torch.no_grad()
def teacher_forced_quality(reference, candidate, conds: torch.Tensor, text_ids: torch.Tensor,
                           codes: torch.Tensor) -> dict[str, float]:
    """Compare two GPTs on given codes (B, N) for one text (B or 1, L): KL, NLL of each, top-1 agreement.

    Positions are the training ones; every mel target position (codes and the stop) counts.
    Returns :meth:`Quality.as_dict` (keys ``kl``, ``nll_reference``, ``nll_candidate``, ``nll_change``,
    ``top1_agreement``, ``positions``, ``passes``).
    """
    return teacher_forced_quality_over(reference, candidate, [(conds, text_ids, codes)]).as_dict()


@torch.no_grad()
def teacher_forced_quality_over(reference, candidate, prompts) -> Quality:
    """:class:`Quality` pooled over many prompts ``(conds, text_ids, codes)``, weighted by code count."""
    return _pooled(reference, candidate, prompts, _mel_logits)


@torch.no_grad()
def decoded_logits(model, conds: torch.Tensor, text_ids: torch.Tensor, codes: torch.Tensor):
    """Next-code logits (N+1, V) and targets (N+1,) of ``model`` fed one text's codes (1, N) through the
    decode path itself: the prompt's prefill, then one code per step into the model's own KV cache."""
    from tagtune.generation.decoder import MelDecoder, prepare_prompt

    prompt = prepare_prompt(model, conds, text_ids)
    decoder = MelDecoder(model, prompt, use_cache=True, position_mode="train", max_new_tokens=codes.shape[1] + 1)
    logits = [decoder.start()] + [decoder.step(codes[:, k]) for k in range(codes.shape[1])]  # each (1, V)
    stop = codes.new_full((1,), model.cfg.stop_mel_token)
    return torch.cat(logits), torch.cat([codes[0], stop])


@torch.no_grad()
def decoded_quality_over(reference, candidate, prompts) -> Quality:
    """:class:`Quality` of each model decoding as sampling runs it (``decoded_logits``: the inference prompt,
    the KV cache, one query per step), pooled over prompts ``(conds, text_ids, codes)`` with codes (1, N).
    ``teacher_forced_quality_over`` scores the training layout in one forward pass instead."""
    return _pooled(reference, candidate, prompts, decoded_logits)


def _pooled(reference, candidate, prompts, logits_of) -> Quality:
    total = torch.zeros(5, dtype=torch.double)
    for conds, text_ids, codes in prompts:
        ref_logits, targets = logits_of(reference, conds, text_ids, codes)
        cand_logits, _ = logits_of(candidate, conds, text_ids, codes)
        total += _sums(ref_logits, cand_logits, targets)
    return _from_sums(total)


@dataclass(frozen=True)
class AudioDifference:
    """A waveform against the fp32 one made from the same codes."""

    snr_db: float
    log_mel_mean: float  # mean |log-mel difference|, nats
    log_mel_loud: float  # the same over the bins within LOUD_NATS of the loudest
    log_mel_max: float

    @property
    def passes(self) -> bool:
        return self.log_mel_mean <= MAX_LOG_MEL_DIFF

    def summary(self) -> str:
        return (f"SNR {self.snr_db:6.1f} dB, log-mel |diff| mean {self.log_mel_mean:.4f} (loud bins "
                f"{self.log_mel_loud:.4f}), max {self.log_mel_max:.3f}: {'passes' if self.passes else 'fails'}")


@torch.no_grad()
def audio_difference(reference: torch.Tensor, candidate: torch.Tensor, mel=None) -> AudioDifference:
    """SNR and log-mel differences of ``candidate`` against ``reference`` (float waveforms (n,) at 24 kHz)."""
    if mel is None:
        from tagtune.audio import MelSpectrogram

        mel = MelSpectrogram()
    err = candidate - reference
    snr = 10 * torch.log10(reference.pow(2).mean() / err.pow(2).mean().clamp_min(1e-30)).item()
    ref_mel = mel(reference)
    diff = (mel(candidate) - ref_mel).abs()
    loud = ref_mel > ref_mel.max() - LOUD_NATS
    return AudioDifference(snr, diff.mean().item(), diff[loud].mean().item(), diff.max().item())
