"""Score processors with the semantics of HuggingFace transformers 4.36 (the release IndexTTS v1.5.0 pins).

Every function takes scores (N, V) for the next token and returns a new tensor; removed candidates are set
to ``-inf``. They are applied in HF's order: repetition penalty (a "processor"), then temperature, top-k and
top-p (the "warpers", used only when sampling).
"""

from __future__ import annotations

import torch

FILTERED = float("-inf")


def repetition_penalty(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise every id present in ``history`` (N, T): positive scores are divided, negative multiplied.

    Works on raw logits (greedy / sampling) and on log-probabilities (beam methods) alike, as in HF.
    """
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, history)  # (N, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, history, seen)


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Divide by the temperature; HF adds no warper at exactly 1.0, so neither do we."""
    return scores if value == 1.0 else scores / value


def top_k(scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Keep the ``max(k, min_keep)`` best candidates per row (ties with the k-th are kept). ``k=0`` is off."""
    if not k:
        return scores
    k = min(max(k, min_keep), scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, FILTERED)


def top_p(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering: drop the least likely candidates whose cumulative probability stays <= 1 - p.

    Sorting is ascending as in HF, so the ``min_keep`` most likely candidates are always kept.
    """
    if p >= 1.0:
        return scores
    ascending, order = torch.sort(scores, descending=False)  # (N, V)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -min_keep:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, FILTERED)


def warp(scores: torch.Tensor, temp: float, k: int, p: float, min_keep: int) -> torch.Tensor:
    """HF's sampling warpers in their fixed order: temperature, top-k, top-p."""
    return top_p(top_k(temperature(scores, temp), k, min_keep), p, min_keep)
