"""Forgetting: teacher-forced NLL on untagged validation clips, tuned vs base.

Both models read exactly the same text ids here (no tags), so their NLLs are comparable: the ratio
tuned / base above 1 is what fine-tuning cost on ordinary speech.
"""

from __future__ import annotations

from tagtune.evaluate.nll import ScoreRow, code_nll, item_conditioning


def untagged_nll(model, items: list[dict]) -> dict:
    """Mean NLL per code (nats, the stop code included) over ``items`` and the per-clip values."""
    conds = item_conditioning(model.gpt, items)
    rows = [ScoreRow(c, it["text_ids"], it["codes"], int(it["wav_len"])) for c, it in zip(conds, items)]
    nll = code_nll(model.gpt, rows)
    total = sum(float(x.sum()) for x in nll)
    count = sum(x.numel() for x in nll)
    return {
        "clips": len(items),
        "codes": count,
        "nll_per_code": total / count if count else None,
        "per_clip": [float(x.mean()) for x in nll],
    }


def forgetting_summary(tuned: dict, base: dict | None) -> dict:
    """``untagged_nll_ratio`` = tuned / base mean NLL per code (None without a base or clips)."""
    t = tuned["nll_per_code"]
    b = base["nll_per_code"] if base else None
    per_clip = None
    if base and tuned["per_clip"]:
        worse = [x > y for x, y in zip(tuned["per_clip"], base["per_clip"])]
        per_clip = sum(worse) / len(worse)
    return {
        "clips": tuned["clips"],
        "untagged_nll": {"tuned": t, "base": b},
        "untagged_nll_ratio": t / b if t is not None and b else None,
        "share_of_clips_worse": per_clip,
    }
