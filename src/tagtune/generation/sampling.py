"""Greedy search and multinomial sampling, one code per row and step (HF 4.36 ``greedy_search`` / ``sample``).

Scores are the raw fp32 logits; the repetition penalty acts on them (positive ÷ R, negative × R) for every id
in the row's history (HF's fake prompt ids, then the generated codes). A row that has emitted stop_mel keeps
receiving stop_mel (HF's pad id) until every row has stopped or ``max_new_tokens`` codes exist.
"""

from __future__ import annotations

import torch

from tagtune.generation import processors
from tagtune.generation.decoder import MelDecoder


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
        scores = processors.repetition_penalty(logits, history, cfg.repetition_penalty)
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
    scores = processors.warp(scores, cfg.temperature, cfg.top_k, cfg.top_p, min_keep=1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
