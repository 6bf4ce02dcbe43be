"""Tag guidance: decoding that leans on the text's tags more than the model does by itself.

Classifier-free guidance (Ho & Salimans 2022; for autoregressive language models, Sanchez et al. 2023, which
transformers ships as ``guidance_scale``) with a prompt's tag-free twin as the unconditional branch. Every step
scores the next code from both texts, with the same speaker prompt and the same codes so far, and decodes from

    log p(code | tag-free text) + s · (log p(code | tagged text) − log p(code | tag-free text))

``s = 1`` is plain decoding. ``s > 1`` moves each step further in the direction the tags move it: a tag that
the model has learned weakly (an event whose codes resemble speech, so the tag shifts each code's distribution
only a little) then makes its event more often (docs/tag-guidance.md measures how much, and where a large scale
moves events away from their tag). A row whose text has no tag has equal
branches and decodes exactly as without guidance, so guidance never adds an event where no tag stands.

**Anchored to the base.** With an ``Anchor`` (the base model and its own speaker prompt from the same
reference) the first term comes from the base model reading the tag-free text instead:

    log p_base(code | tag-free text) + s · (log p(code | tagged text) − log p(code | tag-free text))

so the tuned model contributes only what its tags change, and what the fine-tune moved elsewhere (toward the
fine-tune speaker's voice, away from the other language) cancels between its two branches. A row without a tag
then decodes as the base model does, and ``s = 1`` is no longer plain decoding. docs/tag-guidance.md measures
what it holds and what it costs (one more backbone call per step, on the base's weights).

**The anchor's share.** The base has never made an event, so where one should begin it holds the event's codes
far down; most of all where speech has ended and the tag is the text's last word (docs/tag-guidance.md measures
it). ``share`` a in [0, 1] moves the start toward the tuned model's own tag-free scores, log-linearly:

    (1 - a) log p_base(code | tag-free text) + a log p(code | tag-free text), renormalised

a = 0 is the base alone; a = 1 is guidance from the twin, except that rows without a tag still decode as the base.

Both branches run as one batch of 2N rows through the ``MelDecoder`` (one backbone call per step): the tagged
rows first, their tag-free twins after them in the same order. transformers' own processor runs the
unconditional branch as a second model call per step and supports one row; the searches here need batches,
beams and the KV cache of ``MelDecoder``, so the combination is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tagtune.generation.decoder import MelDecoder

NO_GUIDANCE = 1.0
MAX_TAG_GUIDANCE = 10.0
BASE_ALONE = 0.0  # anchor share: anchored guidance starts from the base's scores alone


def _number_in(value, low: float, high: float, name: str, meaning: str) -> float:
    """``value`` as a float in [low, high]; a ValueError that names the range otherwise (NaN and what is no number
    included)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}] ({meaning}), got {value!r}")
    return number


def check_tag_guidance(value: float) -> float:
    """``value`` as a float in [1, MAX_TAG_GUIDANCE]; a ValueError that names the range otherwise."""
    return _number_in(value, NO_GUIDANCE, MAX_TAG_GUIDANCE, "tag_guidance", "1 = off")


def check_anchor_share(value: float) -> float:
    """``value`` as a float in [0, 1]; a ValueError that names the range otherwise."""
    return _number_in(value, BASE_ALONE, 1.0, "anchor_share", "0 = the base alone")


@dataclass(frozen=True)
class Anchor:
    """The base model a tuned model's guided decoding starts from: its GPT and its speaker prompt (1 or B, P, D)
    for the same reference, computed by the base's own conditioning path."""

    gpt: object
    conds: torch.Tensor


def anchored_start(anchor: torch.Tensor, free: torch.Tensor, share: float) -> torch.Tensor:
    """The log-probabilities anchored guidance starts from: the base's (``anchor``, logits (N, V)) moved ``share``
    of the way toward the tuned model's own tag-free log-probabilities (``free``, (N, V)), log-linearly (a weighted
    geometric mean)."""
    start = anchor.log_softmax(dim=-1)
    return start if share == BASE_ALONE else (start + share * (free - start)).log_softmax(dim=-1)


def guided_scores(tagged: torch.Tensor, free: torch.Tensor, scale: float, plain: torch.Tensor,
                  anchor: torch.Tensor | None = None, share: float = BASE_ALONE) -> torch.Tensor:
    """Guided next-code log-probabilities (N, V) from the logits of the tagged rows and of their tag-free twins
    (N, V each), starting from the twins' or from ``anchor``'s (the base model on the tag-free texts). Rows where
    ``plain`` (N,) is True have no tag and keep the logits of the model they start from as they are, so that the
    repetition penalty, which treats logits and log-probabilities differently, acts on them as it does without
    guidance."""
    unconditional = free.log_softmax(dim=-1)
    start = unconditional if anchor is None else anchored_start(anchor, unconditional, share)
    mixed = start + scale * (tagged.log_softmax(dim=-1) - unconditional)
    return torch.where(plain[:, None], tagged if anchor is None else anchor, mixed)


class GuidedDecoder:
    """A ``MelDecoder`` over [tagged rows ‖ tag-free rows] seen as its first half: ``start``, ``step`` and
    ``reorder`` take and return the tagged rows' view (N = rows of the first half, beams included). ``anchor``: the
    base model's ``MelDecoder`` over the tag-free texts (N rows), stepped alongside."""

    def __init__(self, decoder: MelDecoder, scale: float, plain: torch.Tensor, anchor: MelDecoder | None = None,
                 share: float = BASE_ALONE):
        self.decoder, self.scale, self.anchor, self.share = decoder, scale, anchor, share
        self.rows = decoder.history.shape[0] // 2
        self.plain = plain.repeat_interleave(decoder.repeat)  # (N,) per prompt row -> per decoded row
        self.history = decoder.history[: self.rows]

    def start(self) -> torch.Tensor:
        return self._guide(self.decoder.start(), None if self.anchor is None else self.anchor.start())

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        anchor = None if self.anchor is None else self.anchor.step(tokens)
        return self._guide(self.decoder.step(torch.cat([tokens, tokens])), anchor)

    def reorder(self, index: torch.Tensor) -> None:
        self.decoder.reorder(torch.cat([index, index + self.rows]))
        if self.anchor is not None:
            self.anchor.reorder(index)
        self.plain = self.plain.index_select(0, index)

    def _guide(self, logits: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return guided_scores(logits[: self.rows], logits[self.rows :], self.scale, self.plain, anchor, self.share)
