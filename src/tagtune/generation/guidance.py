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

**Guidance asks for the event, not for its length.** The tag-free branch never expects an event's codes, so
inside an event the tagged branch stays ahead of it on every code, and guidance that goes on amplifies the event
for as long as it lasts and then keeps the row from ending: on the 1.x demo model, events decoded at s = 3 were
detected 2.7 times as long as decoded without guidance, and tagged rows ran 1.7 times their recording's length
(docs/tag-guidance.md). With ``guide_until_onset`` (``EventOnsets``) a row is guided only until the events its
tags ask for have begun: an event begins at a code the tagged branch finds ``ONSET_MARGIN`` nats likelier than
the tag-free one, and it has ended after ``EVENT_QUIET_CODES`` codes without such a margin. Inside an event the
row decodes as the tuned model's tagged branch alone (its own event, at its own length, whatever the start);
after its tags' events it decodes at s = 1 from the same start; a further tag is guided again once the event
before it has ended, and so is the same tag when its "event" ended within ``MIN_EVENT_CODES`` codes (a stray
code of speech that crossed the margin).

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
# An event code: the tagged branch finds it this many nats likelier than the tag-free one (on the 1.x demo most
# speech codes stay below it; at 1 or 2 the events kept about the tuned model's own length, docs/tag-guidance.md)
ONSET_MARGIN = 2.0
# event codes in a row that begin an event: at 3, 14 of 48 English rows of the 1.x demo never handed over and ran
# on (151 codes per row against 124 at 1); 1 hands over at the first, and MIN_EVENT_CODES takes back a stray one
ONSET_CODES = 1
EVENT_QUIET_CODES = 4  # codes without that margin after which an event has ended
# an "event" of fewer event codes was a stray code of speech and its tag is guided again: half the English rows
# of the 1.x demo crossed the margin before 0.7 of their recorded onset (main mean hit 0.42 on one evaluation
# without this rule, 0.52 with it; docs/tag-guidance.md)
MIN_EVENT_CODES = 3


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


def guided_scores(tagged: torch.Tensor, free: torch.Tensor, scale: float | torch.Tensor, plain: torch.Tensor,
                  anchor: torch.Tensor | None = None, share: float = BASE_ALONE,
                  own: torch.Tensor | None = None) -> torch.Tensor:
    """Guided next-code log-probabilities (N, V) from the logits of the tagged rows and of their tag-free twins
    (N, V each), starting from the twins' or from ``anchor``'s (the base model on the tag-free texts); ``scale`` is
    one number or one per row ((N, 1), ``EventOnsets.scales``). Rows where ``plain`` (N,) is True have no tag and
    keep the logits of the model they start from as they are, so that the repetition penalty, which treats logits
    and log-probabilities differently, acts on them as it does without guidance; rows where ``own`` (N,) is True
    (inside an event, ``EventOnsets.inside``) keep the tagged branch's logits: the event is the tuned model's."""
    return _guided(tagged, tagged.log_softmax(dim=-1), free.log_softmax(dim=-1), scale, plain, anchor, share, own)


def _guided(tagged, tagged_lp, free_lp, scale, plain, anchor, share, own) -> torch.Tensor:
    """``guided_scores`` from the tagged logits and both branches' log-probabilities, already computed."""
    start = free_lp if anchor is None else anchored_start(anchor, free_lp, share)
    mixed = start + scale * (tagged_lp - free_lp)
    if own is not None:
        mixed = torch.where(own[:, None], tagged, mixed)
    return torch.where(plain[:, None], tagged if anchor is None else anchor, mixed)


def same_rows(text_ids: torch.Tensor, free_ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(B,) True where a row's text equals its tag-free twin (start / stop ids and padding aside): it has no tag."""
    def text(row: torch.Tensor) -> list[int]:
        return [i for i in row.tolist() if i not in (start, stop)]

    return torch.tensor([text(a) == text(b) for a, b in zip(text_ids, free_ids, strict=True)],
                        device=text_ids.device)


def tag_runs(tagged: torch.Tensor, free: torch.Tensor, skip: tuple[int, ...] = ()) -> torch.Tensor:
    """(B,) the number of places where a text row (B, L) differs from its tag-free twin (B, L'): the runs of ids
    the twin leaves out (a tag, with the bare "▁" piece before it where the tokenizer writes one; tags written
    side by side make one run). ``skip``: ids that are not text (start, stop and padding)."""
    counts = []
    for row, twin in zip(tagged.tolist(), free.tolist(), strict=True):
        kept = [i for i in twin if i not in skip]
        runs, j, inside = 0, 0, False
        for i in (i for i in row if i not in skip):
            if j < len(kept) and i == kept[j]:
                j, inside = j + 1, False
            elif not inside:
                runs, inside = runs + 1, True
        counts.append(runs)
    return torch.tensor(counts)


class EventOnsets:
    """Which rows guidance still acts on: each decoded row may begin as many events under guidance as its text
    has tags (``tags`` (N,)). An event has begun after ``ONSET_CODES`` codes in a row that the tagged branch finds
    ``ONSET_MARGIN`` nats likelier than the tag-free one, and has ended after ``EVENT_QUIET_CODES`` codes without
    such a margin; inside it the row decodes as the tuned model's tagged branch (``inside``), and once its tags'
    events have been made it is no longer guided. An event of fewer than ``MIN_EVENT_CODES`` event codes does not
    count: its tag is guided again (module docstring)."""

    def __init__(self, tags: torch.Tensor):
        self.tags = tags.float()
        self.begun = torch.zeros_like(self.tags)  # events begun so far
        self.streak = torch.zeros_like(self.tags)  # event codes in a row
        self.quiet = torch.full_like(self.tags, EVENT_QUIET_CODES)  # codes since the last event code
        self.inside = torch.zeros_like(self.tags, dtype=torch.bool)  # (N,) inside an event that has begun
        self.length = torch.zeros_like(self.tags)  # event codes of the current event
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # the tagged / tag-free log-probs last scored

    def scales(self, scale: float, tagged: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """(N, 1) the scale of each row's next code, given the logits (N, V) it is scored from (their
        log-probabilities are kept in ``last``, so that ``observe`` can read the chosen codes' margins)."""
        self.last = (tagged.log_softmax(dim=-1), free.log_softmax(dim=-1))
        guided = (self.begun < self.tags) & ~self.inside
        return torch.where(guided, scale, NO_GUIDANCE).to(tagged)[:, None]

    def observe(self, tokens: torch.Tensor) -> None:
        """The codes (N,) the rows took from the scores last given."""
        tagged, free = self.last
        index = tokens.view(-1, 1).to(tagged.device)
        event = ((tagged.gather(1, index) - free.gather(1, index))[:, 0] > ONSET_MARGIN).to(self.quiet.device)
        self.streak = torch.where(event, self.streak + 1, torch.zeros_like(self.streak))
        self.quiet = torch.where(event, torch.zeros_like(self.quiet), self.quiet + 1)
        self.length += (event & self.inside).float()
        ended = self.inside & (self.quiet >= EVENT_QUIET_CODES)
        self.begun -= (ended & (self.length < MIN_EVENT_CODES)).float()  # too short to be the event: guide again
        self.inside &= ~ended
        onset = ~self.inside & (self.streak >= ONSET_CODES)
        self.begun += onset.float()
        self.inside |= onset
        self.length = torch.where(onset, self.streak, self.length)

    def reorder(self, index: torch.Tensor) -> None:
        """Row r continues old row ``index[r]`` (beam search)."""
        self.tags, self.begun, self.streak, self.quiet, self.inside, self.length = (
            t.index_select(0, index.to(t.device)) for t in (self.tags, self.begun, self.streak, self.quiet,
                                                            self.inside, self.length))
        if self.last is not None:
            self.last = tuple(t.index_select(0, index.to(t.device)) for t in self.last)


class Guide:
    """What guided decoding keeps per decoded row, for ``GuidedDecoder`` and the serve scheduler alike: the scale,
    the anchor's share, which rows have no tag (``plain``) and, with ``tags`` (per row, ``tag_runs``), the
    ``EventOnsets`` that end a row's guidance where its events begin (None guides every code). ``plain`` and
    ``tags`` are given per prompt row and repeated ``repeat`` times (beams)."""

    def __init__(self, scale: float, plain: torch.Tensor, share: float = BASE_ALONE, tags: torch.Tensor | None = None,
                 repeat: int = 1):
        self.scale, self.share = scale, share
        self.plain = plain.repeat_interleave(repeat)
        self.onsets = None if tags is None else EventOnsets(tags.repeat_interleave(repeat))

    @classmethod
    def of_rows(cls, text_ids: torch.Tensor, free_ids: torch.Tensor, cfg, start: int, stop: int,
                repeat: int = 1) -> Guide | None:
        """The Guide of texts (B, L) and their tag-free twins (B, L') under ``cfg`` (a GenerationConfig), or None
        when no row has a tag: the model guidance starts from then decodes alone."""
        plain = same_rows(text_ids, free_ids, start, stop)
        if bool(plain.all()):
            return None
        tags = tag_runs(text_ids, free_ids, (start, stop)) if cfg.guide_until_onset else None
        return cls(cfg.tag_guidance, plain, cfg.anchor_share, tags, repeat)

    def scores(self, tagged: torch.Tensor, free: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """The guided scores (N, V) of the branches' logits (``guided_scores``), each log-softmax taken once."""
        if self.onsets is None:
            return guided_scores(tagged, free, self.scale, self.plain, anchor, self.share)
        scale = self.onsets.scales(self.scale, tagged, free)
        return _guided(tagged, *self.onsets.last, scale, self.plain, anchor, self.share,
                       self.onsets.inside.to(tagged.device))

    def observe(self, tokens: torch.Tensor) -> None:
        """The codes (N,) the rows took from the scores last given."""
        if self.onsets is not None:
            self.onsets.observe(tokens)

    def reorder(self, index: torch.Tensor) -> None:
        """Row r continues old row ``index[r]`` (beam search)."""
        self.plain = self.plain.index_select(0, index)
        if self.onsets is not None:
            self.onsets.reorder(index)


class GuidedDecoder:
    """A ``MelDecoder`` over [tagged rows ‖ tag-free rows] seen as its first half: ``start``, ``step`` and
    ``reorder`` take and return the tagged rows' view (N = rows of the first half, beams included), scored by
    ``guide``. ``anchor``: the base model's ``MelDecoder`` over the tag-free texts (N rows), stepped alongside."""

    def __init__(self, decoder: MelDecoder, guide: Guide, anchor: MelDecoder | None = None):
        self.decoder, self.guide, self.anchor = decoder, guide, anchor
        self.rows = decoder.history.shape[0] // 2
        self.history = decoder.history[: self.rows]

    def start(self) -> torch.Tensor:
        return self._guide(self.decoder.start(), None if self.anchor is None else self.anchor.start())

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.guide.observe(tokens)
        anchor = None if self.anchor is None else self.anchor.step(tokens)
        return self._guide(self.decoder.step(torch.cat([tokens, tokens])), anchor)

    def reorder(self, index: torch.Tensor) -> None:
        self.decoder.reorder(torch.cat([index, index + self.rows]))
        if self.anchor is not None:
            self.anchor.reorder(index)
        self.guide.reorder(index)

    def _guide(self, logits: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return self.guide.scores(logits[: self.rows], logits[self.rows :], anchor)
