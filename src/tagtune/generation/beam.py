"""Beam search and beam-search multinomial sampling (HF 4.36 ``beam_search`` / ``beam_sample``).

The official default is beam sampling with 3 beams. Per step, for the N = B·K rows (K beams per batch item):
log_softmax → repetition penalty on the log-probs → (sampling only) temperature, top-k, top-p keeping at least
2 candidates → add each beam's running score → flatten the K beams of an item (B, K·V) → pick 2K candidates
(``torch.multinomial`` without replacement over the softmax, one call per step, or top-2K without sampling) →
sort by score → the BeamSearchScorer rules with eos = stop_mel, length_penalty 0 and early_stopping False.
The best finished hypothesis of each item is returned with stop_mel appended; shorter rows are padded with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tagtune.generation import sampling
from tagtune.generation.decoder import MelDecoder

MIN_CANDIDATES = 2  # HF keeps eos + one more through top-k/top-p in beam methods
LOW_SCORE = -1e9  # initial score of beams 1.. (beam search; beam sampling in HF >= 4.45): step 1 expands beam 0
WORST_INIT = 1e9  # BeamHypotheses' initial worst score


@dataclass
class Hypotheses:
    """Finished hypotheses of one batch item (HF BeamHypotheses; length_penalty 0: score = sum of log-probs)."""

    size: int
    items: list = field(default_factory=list)  # [(score, codes (T,))] in insertion order
    worst: float = WORST_INIT

    def add(self, codes: torch.Tensor, score: float) -> None:
        """Keep the ``size`` best; a newcomer must beat the current worst once the list is full."""
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, codes))
            if len(self.items) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.items))
                del self.items[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_running: float) -> bool:
        """early_stopping=False: done when no running beam can still beat the worst kept hypothesis."""
        return len(self.items) >= self.size and self.worst >= best_running

    def best(self) -> torch.Tensor:
        """Codes of the best hypothesis (the last inserted among equal scores, as HF's sort-then-pop)."""
        return sorted(self.items, key=lambda item: item[0])[-1][1]


def beam_codes(decoder: MelDecoder, history: torch.Tensor, cfg, stop: int, batch: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate (batch, T <= cfg.max_new_tokens) codes; ``decoder``/``history`` hold batch·num_beams rows."""
    K = cfg.num_beams
    scores_run = torch.zeros(batch, K, device=history.device)
    if not cfg.do_sample or cfg.beam_sample_from_first:
        scores_run[:, 1:] = LOW_SCORE
    scores_run = scores_run.view(-1)  # (N,)
    generated = history.new_empty(batch * K, 0)
    hyps, done = [Hypotheses(K) for _ in range(batch)], [False] * batch
    logits = decoder.start()  # (N, V)
    for step in range(cfg.max_new_tokens):
        flat = _step_scores(logits, history, cfg) + scores_run[:, None]  # (N, V)
        vocab = flat.shape[-1]
        cand_scores, cand = _candidates(flat.view(batch, K * vocab), 2 * K, cfg.do_sample, generator)
        scores_run, tokens, rows = _advance(cand_scores, cand // vocab, cand % vocab, generated, hyps, done, stop)
        generated = torch.cat([generated[rows], tokens[:, None]], dim=1)
        history = torch.cat([history[rows], tokens[:, None]], dim=1)
        if all(done) or step == cfg.max_new_tokens - 1:
            break
        decoder.reorder(rows)
        logits = decoder.step(tokens)
    return _finalize(hyps, done, generated, scores_run, stop, cfg.max_new_tokens)


def _step_scores(logits: torch.Tensor, history: torch.Tensor, cfg) -> torch.Tensor:
    """Processed log-probs (N, V) of one step, before the running beam scores are added."""
    scores = F.log_softmax(logits, dim=-1)
    scores = sampling.repetition_penalty(scores, history, cfg.repetition_penalty)
    if cfg.do_sample:
        scores = sampling.warp(scores, cfg.temperature, cfg.top_k, cfg.top_p, MIN_CANDIDATES)
    return scores


def _candidates(flat: torch.Tensor, n: int, sample: bool, generator):
    """``n`` candidates per item from flat scores (B, K·V), best first: (scores (B, n), flat indices (B, n))."""
    if not sample:
        return torch.topk(flat, n, dim=1, largest=True, sorted=True)
    picked = torch.multinomial(flat.softmax(dim=-1), num_samples=n, generator=generator)  # (B, n)
    scores = flat.gather(1, picked)
    scores, order = torch.sort(scores, descending=True, dim=1)
    return scores, picked.gather(1, order)


def _advance(cand_scores, cand_beams, cand_tokens, generated, hyps, done, stop):
    """BeamSearchScorer.process: file finished candidates, keep the K best others per item.

    Returns the new running scores (N,), the tokens to append (N,) and the source row of each beam (N,).
    """
    B, K = len(hyps), hyps[0].size
    scores = torch.zeros(B, K, dtype=cand_scores.dtype, device=cand_scores.device)
    tokens = torch.full((B, K), stop, dtype=torch.long, device=cand_scores.device)
    rows = torch.arange(B * K, device=cand_scores.device).view(B, K)  # finished items just idle on their rows
    for b in range(B):
        if done[b]:
            continue
        kept = 0
        for rank in range(cand_scores.shape[1]):
            row, token, score = b * K + int(cand_beams[b, rank]), int(cand_tokens[b, rank]), cand_scores[b, rank]
            if token == stop:
                if rank < K:  # a stop ranked below the K best candidates is ignored
                    hyps[b].add(generated[row].clone(), score.item())
            else:
                scores[b, kept], tokens[b, kept], rows[b, kept] = score, token, row
                kept += 1
            if kept == K:
                break
        done[b] = hyps[b].is_done(cand_scores[b].max().item())
    return scores.view(-1), tokens.view(-1), rows.view(-1)


def _finalize(hyps, done, generated, scores_run, stop, max_new: int) -> torch.Tensor:
    """Add the open beams of unfinished items, take each item's best and append stop where it fits."""
    K = hyps[0].size
    for b, item in enumerate(hyps):
        if not done[b]:
            for row in range(b * K, (b + 1) * K):
                item.add(generated[row].clone(), scores_run[row].item())
    best = [item.best() for item in hyps]
    width = min(max(len(codes) for codes in best) + 1, max_new)
    out = torch.full((len(best), width), stop, dtype=torch.long, device=generated.device)
    for b, codes in enumerate(best):
        out[b, : len(codes)] = codes
    return out
