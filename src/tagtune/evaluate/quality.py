"""Agreement of a reduced-precision (or otherwise changed) GPT with its fp32 reference, teacher-forced."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
