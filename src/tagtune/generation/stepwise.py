"""The two searches as step machines: one ``advance(logits)`` per decode step, codes readable in between.

``sample_codes`` and ``beam_codes`` run their own loops; streaming and a server that batches the steps of
several requests need to drive the loop themselves and to know, after every step, which codes can no longer
change. ``SampleSearch`` and ``BeamSearch`` perform exactly the same operations in the same order as those two
functions (same scores, same draws from the generator), so ``run_search`` over a ``MelDecoder`` returns the codes
``generate_codes`` returns.

Which codes are certain: with one code per step (greedy, sampling) every emitted code is final. With beams the
answer is the best of the finished hypotheses and the running beams' futures, all of which extend the common
prefix of the running beams and the finished hypotheses, so that prefix is final.
"""

from __future__ import annotations

import torch

from tagtune.generation import sampling
from tagtune.generation.beam import LOW_SCORE, Hypotheses, _advance, _candidates, _finalize, _step_scores
from tagtune.generation.decoder import MelDecoder


class SampleSearch:
    """Greedy search or multinomial sampling over N independent rows (``sample_codes`` one step at a time)."""

    def __init__(self, history: torch.Tensor, cfg, stop: int, generator: torch.Generator | None = None):
        self.history, self.cfg, self.stop, self.generator = history, cfg, stop, generator
        self.unfinished = torch.ones(history.shape[0], dtype=torch.bool, device=history.device)
        self.emitted: list[torch.Tensor] = []  # one (N,) tensor per step
        self.done = False

    @property
    def items(self) -> int:
        return self.history.shape[0]

    def advance(self, logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Pick the next code of every row from its logits (N, V); returns (tokens (N,), no reordering)."""
        scores = sampling.repetition_penalty(logits, self.history, self.cfg.repetition_penalty)
        tokens = sampling._pick(scores, self.cfg, self.generator)
        tokens = torch.where(self.unfinished, tokens, torch.full_like(tokens, self.stop))
        self.emitted.append(tokens)
        self.history = torch.cat([self.history, tokens[:, None]], dim=1)
        self.unfinished &= tokens != self.stop
        self.done = not bool(self.unfinished.any()) or len(self.emitted) == self.cfg.max_new_tokens
        return tokens, None

    def certain(self, item: int) -> list[int]:
        """Codes of row ``item`` that can no longer change, stop excluded."""
        codes = [int(step[item]) for step in self.emitted]
        return codes[: codes.index(self.stop)] if self.stop in codes else codes

    def finished(self, item: int) -> bool:
        return self.done or not bool(self.unfinished[item])

    def result(self) -> torch.Tensor:
        """(N, T) codes as ``sample_codes`` returns them."""
        return torch.stack(self.emitted, dim=1)


class BeamSearch:
    """Beam search / beam sampling for ``batch`` items of K beams each (``beam_codes`` one step at a time)."""

    def __init__(self, history: torch.Tensor, cfg, stop: int, batch: int, generator: torch.Generator | None = None):
        self.cfg, self.stop, self.batch, self.generator = cfg, stop, batch, generator
        self.K = K = cfg.num_beams
        scores = torch.zeros(batch, K, device=history.device)
        if not cfg.do_sample or cfg.beam_sample_from_first:
            scores[:, 1:] = LOW_SCORE
        self.scores = scores.view(-1)  # (N,) running beam scores
        self.history = history  # (N, T0)
        self.generated = history.new_empty(batch * K, 0)
        self.hyps = [Hypotheses(K) for _ in range(batch)]
        self.item_done = [False] * batch
        self.steps = 0
        self.done = False
        self._result: torch.Tensor | None = None

    @property
    def items(self) -> int:
        return self.batch

    def advance(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One beam step from logits (N, V); returns (tokens (N,), source row of each beam (N,))."""
        flat = _step_scores(logits, self.history, self.cfg) + self.scores[:, None]  # (N, V)
        vocab = flat.shape[-1]
        cand_scores, cand = _candidates(flat.view(self.batch, self.K * vocab), 2 * self.K, self.cfg.do_sample,
                                        self.generator)
        self.scores, tokens, rows = _advance(cand_scores, cand // vocab, cand % vocab, self.generated, self.hyps,
                                             self.item_done, self.stop)
        self.generated = torch.cat([self.generated[rows], tokens[:, None]], dim=1)
        self.history = torch.cat([self.history[rows], tokens[:, None]], dim=1)
        self.steps += 1
        self.done = all(self.item_done) or self.steps == self.cfg.max_new_tokens
        return tokens, rows

    def certain(self, item: int) -> list[int]:
        """The common prefix of every way item ``item`` can still end (its best hypothesis once finished)."""
        if self.done:
            return self.final(item)
        if self.item_done[item]:
            return self.hyps[item].best().tolist()
        rows = range(item * self.K, (item + 1) * self.K)
        candidates = [self.generated[r].tolist() for r in rows] + [c.tolist() for _, c in self.hyps[item].items]
        prefix = candidates[0]
        for other in candidates[1:]:
            n = 0
            while n < min(len(prefix), len(other)) and prefix[n] == other[n]:
                n += 1
            prefix = prefix[:n]
        return prefix

    def finished(self, item: int) -> bool:
        return self.done or self.item_done[item]

    def result(self) -> torch.Tensor:
        """(batch, T) codes as ``beam_codes`` returns them (the best hypothesis, stop appended where it fits)."""
        if self._result is None:  # finalising files the open beams: once only
            self._result = _finalize(self.hyps, self.item_done, self.generated, self.scores, self.stop,
                                     self.cfg.max_new_tokens)
        return self._result

    def final(self, item: int) -> list[int]:
        """Item ``item``'s answer once the search is done, stop excluded."""
        row = self.result()[item].tolist()
        return row[: row.index(self.stop)] if self.stop in row else row


def new_search(history: torch.Tensor, cfg, stop: int, batch: int, generator: torch.Generator | None = None):
    """The search ``generate_codes`` would run: beams when ``cfg.num_beams`` > 1 (history holds batch·K rows)."""
    if cfg.num_beams > 1:
        return BeamSearch(history, cfg, stop, batch, generator)
    return SampleSearch(history, cfg, stop, generator)


def run_search(decoder: MelDecoder, search):
    """Drive ``search`` over ``decoder`` to the end, yielding after every step (the search is then readable)."""
    logits = decoder.start()
    while True:
        tokens, rows = search.advance(logits)
        yield search
        if search.done:
            return
        if rows is not None:
            decoder.reorder(rows)
        logits = decoder.step(tokens)
