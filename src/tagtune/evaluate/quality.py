"""Agreement of a reduced-precision (or otherwise changed) GPT with its fp32 reference, teacher-forced.

The bar a reduced-precision decode path must meet to become a default (``QUALITY_BAR``):

* mean KL(fp32 || reduced) over next-code distributions <= 0.02 nats per code: what sampling sees;
* mel NLL on the same codes within 0.5 % of fp32's;
* top-1 agreement is reported, not required: near-ties flip under any rounding and sampling never sees them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

MAX_KL_NATS = 0.02  # mean KL(fp32 || reduced) per code
MAX_NLL_CHANGE = 0.005  # |NLL_reduced / NLL_fp32 - 1|


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
    total = torch.zeros(5, dtype=torch.double)
    for conds, text_ids, codes in prompts:
        ref_logits, targets = _mel_logits(reference, conds, text_ids, codes)
        cand_logits, _ = _mel_logits(candidate, conds, text_ids, codes)
        total += _sums(ref_logits, cand_logits, targets)
    return _from_sums(total)
