"""Scores from judged clips: tag precision / recall / F1 with onset error, confusion, false events, WER / CER,
speaker similarity, and 95 % intervals by resampling clips.

Matching (per clip): each tag the prompt asks for has an expected onset and a window around it
(``tolerance_s``: HIT_TOLERANCE_S, or TOLERANCE_FRACTION of the clip when that is longer). The event found
nearest to the expected onset within the window answers it: the answer's tag fills the confusion matrix
(``none`` when nothing is in the window), and a right-tag answer is a hit with its onset error. Recall is
hits / tags asked; precision is the found events of a tag that answered a request for that tag / all found
events of that tag (events on untagged prompts count against precision); F1 their harmonic mean.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tagtune.evaluate.detector import NONE
from tagtune.evaluate.freerun import HIT_TOLERANCE_S, TOLERANCE_FRACTION
from tagtune.evaluate.judges.base import Event, Expected

RESAMPLES = 1000
INTERVAL = (2.5, 97.5)  # percentiles of the 95 % interval


def tolerance_s(seconds: float) -> float:
    """Half-width of the window around a tag's expected onset, for a clip of ``seconds``."""
    return max(HIT_TOLERANCE_S, TOLERANCE_FRACTION * seconds)


@dataclass
class JudgedClip:
    """What a clip asked for and what the events judge found in it."""

    expected: list[Expected]
    found: list[Event]
    seconds: float
    answers: list[Event | None] = field(default_factory=list)  # per expected tag, filled by ``match``

    def match(self) -> JudgedClip:
        """Fill ``answers``: the nearest found event within the window of each expected onset."""
        width = tolerance_s(self.seconds)
        self.answers = []
        for exp in self.expected:
            near = [e for e in self.found if abs(e.onset_s - exp.onset_s) <= width]
            self.answers.append(min(near, key=lambda e: abs(e.onset_s - exp.onset_s)) if near else None)
        return self


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r else 0.0


def tag_scores(clips: Sequence[JudgedClip], tag: str) -> dict:
    """precision, recall, f1, onset_error_ms (median over hits); counts: asked, hits, found, found_right."""
    asked = hits = found = answering = 0
    errors = []
    for clip in clips:
        right = set()
        for exp, ans in zip(clip.expected, clip.answers):
            if exp.tag != tag:
                continue
            asked += 1
            if ans is not None and ans.tag == tag:
                hits += 1
                right.add(id(ans))
                errors.append(1000.0 * abs(ans.onset_s - exp.onset_s))
        mine = [e for e in clip.found if e.tag == tag]
        found += len(mine)
        answering += sum(id(e) in right for e in mine)
    p, r = _ratio(answering, found), _ratio(hits, asked)
    return {"precision": p, "recall": r, "f1": _f1(p, r), "onset_error_ms": _median(errors),
            "asked": asked, "found": found, "hits": hits, "found_right": answering}


def event_scores(clips: Sequence[JudgedClip], tags: list[str]) -> dict:
    """Per tag scores, micro-averaged overall ones, the confusion matrix and false events on untagged clips."""
    per_tag = {t: tag_scores(clips, t) for t in tags}
    asked = sum(s["asked"] for s in per_tag.values())
    hits = sum(s["hits"] for s in per_tag.values())
    found = sum(s["found"] for s in per_tag.values())
    answering = sum(s["found_right"] for s in per_tag.values())
    p, r = _ratio(answering, found), _ratio(hits, asked)
    columns = [*tags, NONE]
    counts = {t: dict.fromkeys(columns, 0) for t in tags}
    for clip in clips:
        for exp, ans in zip(clip.expected, clip.answers):
            if exp.tag in counts:
                column = ans.tag if ans is not None and ans.tag in counts[exp.tag] else NONE
                counts[exp.tag][column] += 1
    untagged = [c for c in clips if not c.expected]
    tagged = [c for c in clips if c.expected]
    errors = [s["onset_error_ms"] for s in per_tag.values() if s["onset_error_ms"] is not None]
    return {
        "per_tag": per_tag,
        "overall": {"precision": p, "recall": r, "f1": _f1(p, r), "asked": asked, "found": found,
                    "onset_error_ms": _median(errors)},
        "confusion": {"rows": tags, "columns": columns, "counts": counts},
        "false_event_rate": _ratio(sum(bool(c.found) for c in untagged), len(untagged)),
        "any_event_rate": _ratio(sum(bool(c.found) for c in tagged), len(tagged)),
        "tagged_clips": len(tagged), "untagged_clips": len(untagged),
    }


def interval(units: Sequence, statistic: Callable[[Sequence], float | None], resamples: int = RESAMPLES,
             seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval of ``statistic`` over ``units`` (clips) resampled with replacement."""
    if len(units) < 2:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        v = statistic([units[rng.randrange(len(units))] for _ in units])
        if v is not None:
            values.append(v)
    if not values:
        return None
    values.sort()
    lo, hi = (values[min(len(values) - 1, int(q / 100 * len(values)))] for q in INTERVAL)
    return [lo, hi]


def event_intervals(clips: Sequence[JudgedClip], tags: list[str], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{tag: {precision, recall, f1: [lo, hi]}} by resampling clips."""
    out = {}
    for tag in tags:
        out[tag] = {k: interval(clips, lambda cs, k=k, t=tag: tag_scores(cs, t)[k], resamples, seed)
                    for k in ("precision", "recall", "f1")}
    return out


@dataclass
class Transcript:
    """A reference text (tags removed, normalised) and what the recogniser heard (normalised)."""

    reference: str
    heard: str
    tagged: bool  # the prompt carried tags


def error_rate(items: Sequence[Transcript], unit: str) -> float | None:
    """Corpus-level WER (``unit="word"``) or CER (``"char"``) of the items (jiwer), None without references."""
    import jiwer

    pairs = [(t.reference, t.heard) for t in items if t.reference]
    if not pairs:
        return None
    refs, heard = [r for r, _ in pairs], [h for _, h in pairs]
    return float(jiwer.wer(refs, heard) if unit == "word" else jiwer.cer(refs, heard))


def words_scores(items: Sequence[Transcript], unit: str, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The error rate over all clips (with its interval), on tagged prompts, and on tag-free prompts."""
    if not items:
        return {"value": None, "ci95": None, "with_tags": None, "without_tags": None, "clips": 0}
    return {"value": error_rate(items, unit), "ci95": interval(items, lambda s: error_rate(s, unit), resamples, seed),
            "with_tags": error_rate([t for t in items if t.tagged], unit),
            "without_tags": error_rate([t for t in items if not t.tagged], unit), "clips": len(items)}


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def similarity_scores(values: Sequence[float], tagged: Sequence[bool], resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
    """Mean speaker similarity (with its interval), on tagged and on tag-free prompts."""
    return {"value": mean(values), "ci95": interval(list(values), mean, resamples, seed),
            "with_tags": mean([v for v, t in zip(values, tagged) if t]),
            "without_tags": mean([v for v, t in zip(values, tagged) if not t]), "clips": len(values)}
