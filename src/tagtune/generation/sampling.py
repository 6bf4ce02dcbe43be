"""Score processors and the one-code-per-step search (HF 4.36 ``greedy_search`` / ``sample``).

The processors have the semantics of HuggingFace transformers 4.36, the release IndexTTS v1.5.0 pins. Each
takes scores (N, V) for the next token and returns a new tensor; removed candidates are set to ``-inf``. HF's
order is kept: repetition penalty (a "processor"), then temperature, top-k and top-p (the "warpers", used
only when sampling).

Greedy search and sampling score the raw fp32 logits; the repetition penalty acts on them (positive ÷ R,
negative × R) for every id in the row's history (HF's fake prompt ids, then the generated codes). A row that
has emitted stop_mel keeps receiving stop_mel (HF's pad id) until every row has stopped or
``max_new_tokens`` codes exist.
"""

from __future__ import annotations

import torch

from tagtune.generation.decoder import MelDecoder

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


# ----------------------------------------------------------------------------------------------- search

def sample_codes(decoder: MelDecoder, history: torch.Tensor, cfg, stop: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate codes (N, T <= cfg.max_new_tokens) including each row's stop_mel; rows padded with stop_mel.

    ``cfg`` is a GenerationConfig; ``do_sample=False`` takes the argmax (first index on ties).
    """
    N = history.shape[0]
    unfinished = torch.ones(N, dtype=torch.bool, device=history.device)
    out = []
    logits = decoder.start()  # (N, V)
    for step in range(cfg.max_new_tokens):
        scores = repetition_penalty(logits, history, cfg.repetition_penalty)
        tokens = _pick(scores, cfg, generator)  # (N,)
        tokens = torch.where(unfinished, tokens, torch.full_like(tokens, stop))
        out.append(tokens)
        history = torch.cat([history, tokens[:, None]], dim=1)
        unfinished &= tokens != stop
        if not unfinished.any() or step == cfg.max_new_tokens - 1:
            break
        logits = decoder.step(tokens)
    return torch.stack(out, dim=1)


def _pick(scores: torch.Tensor, cfg, generator: torch.Generator | None) -> torch.Tensor:
    """Argmax, or one multinomial draw from the warped distribution (HF consumes the RNG exactly so)."""
    if not cfg.do_sample:
        return scores.argmax(dim=-1)
    scores = warp(scores, cfg.temperature, cfg.top_k, cfg.top_p, min_keep=1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
