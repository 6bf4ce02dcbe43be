"""Tag reliance: does the model use the tag? Teacher-forced NLL of a clip's codes with the tag, without it,
and with a wrong tag in its place, all within ONE model.

Each tag occurrence in a clip's text is one trial. When the corpus knows the event boundaries, the k-th tag of
the text is the k-th event of the clip and the NLL is summed over the codes overlapping that event (nats per
event: the tag mostly says *that* and *which* event starts, so the gain sits on the event's first codes and a
per-code average would dilute it). Without boundaries (Elise) the trial scores the whole clip.

    reliance_gap  = mean over trials of NLL(tag removed) - NLL(with tag)
    wrong_tag_gap = mean over trials of mean over other tags t' of NLL(t' in its place) - NLL(with tag)
    clip_win_rate = share of trials where the true tag beats the removed variant and every wrong tag
    onset_gap     = the reliance gap over the event's first ONSET_CODES codes alone: how much the tag says that
                    the event begins there, which is what a free-running decoder has to decide
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tagtune.evaluate.nll import ScoreRow, code_nll, item_conditioning
from tagtune.tags.occurrences import Occurrence, occurrences, with_other_tag, without_tag
from tagtune.tags.vocab import TagSet

EVENT, CLIP = "event", "clip"
ONSET_CODES = 2  # the codes of an event that ``onset_gap`` sums


@dataclass
class TrialScore:
    """Summed NLL (nats) of one occurrence's span under each text variant."""

    clip_id: int
    tag: str
    unit: str  # "event" or "clip"
    with_tag: float
    without_tag: float
    wrong_tags: dict[str, float] = field(default_factory=dict)
    onset_with_tag: float | None = None  # the same sums over the event's first ONSET_CODES codes (events only)
    onset_without_tag: float | None = None

    @property
    def gap(self) -> float:
        return self.without_tag - self.with_tag

    @property
    def onset_gap(self) -> float | None:
        if self.onset_with_tag is None or self.onset_without_tag is None:
            return None
        return self.onset_without_tag - self.onset_with_tag

    @property
    def wrong_gap(self) -> float | None:
        if not self.wrong_tags:
            return None
        return sum(self.wrong_tags.values()) / len(self.wrong_tags) - self.with_tag

    @property
    def win(self) -> bool:
        return self.with_tag < min([self.without_tag, *self.wrong_tags.values()])


def _variant_rows(occ: Occurrence, item: dict, conds, tag_ids: dict[str, int], space_id) -> list[tuple[str, ScoreRow]]:
    ids = item["text_ids"]
    make = lambda t: ScoreRow(conds, t, item["codes"], int(item["wav_len"]))  # noqa: E731
    rows = [("", make(without_tag(ids, occ.position, space_id)))]
    rows += [(tag, make(with_other_tag(ids, occ.position, i))) for tag, i in tag_ids.items() if tag != occ.tag]
    return rows


def _span_sum(nll: torch.Tensor, span: tuple[int, int] | None) -> float:
    return float(nll.sum() if span is None else nll[span[0] : span[1]].sum())


def _onset_sum(nll: torch.Tensor, span: tuple[int, int] | None) -> float | None:
    return None if span is None else float(nll[span[0] : min(span[1], span[0] + ONSET_CODES)].sum())


def score_reliance(model, items: list[dict], tags: TagSet, space_id: int | None) -> list[TrialScore]:
    """Score every tag occurrence of ``items`` (prepared examples) under ``model`` (an EvalModel)."""
    conds = item_conditioning(model.gpt, items)
    occs = [o for c, it in enumerate(items) for o in occurrences(it, c, tags, model.tag_ids)]
    occs = [o for o in occs if o.span is None or o.span[1] > o.span[0]]
    rows = [ScoreRow(conds[c], it["text_ids"], it["codes"], int(it["wav_len"])) for c, it in enumerate(items)]
    plan = []  # (occurrence, variant name, row index)
    for occ in occs:
        for name, row in _variant_rows(occ, items[occ.clip], conds[occ.clip], model.tag_ids, space_id):
            plan.append((occ, name, len(rows)))
            rows.append(row)
    nll = code_nll(model.gpt, rows)
    scores = {id(o): TrialScore(int(items[o.clip]["id"]), o.tag, CLIP if o.span is None else EVENT,
                                _span_sum(nll[o.clip], o.span), math.nan,
                                onset_with_tag=_onset_sum(nll[o.clip], o.span)) for o in occs}
    for occ, name, r in plan:
        value = _span_sum(nll[r], occ.span)
        if name:
            scores[id(occ)].wrong_tags[name] = value
        else:
            scores[id(occ)].without_tag = value
            scores[id(occ)].onset_without_tag = _onset_sum(nll[r], occ.span)
    return [scores[id(o)] for o in occs]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def summarize(trials: list[TrialScore], tag_names: list[str]) -> dict[str, dict]:
    """Per tag: trials, unit, reliance_gap (+ its standard error), wrong_tag_gap, clip_win_rate, onset_gap."""
    out = {}
    for tag in tag_names:
        mine = [t for t in trials if t.tag == tag]
        gaps = [t.gap for t in mine]
        wrong = [t.wrong_gap for t in mine if t.wrong_gap is not None]
        units = sorted({t.unit for t in mine})
        out[tag] = {
            "trials": len(mine),
            "unit": units[0] if len(units) == 1 else "mixed" if units else None,
            "reliance_gap": _mean(gaps),
            "reliance_gap_se": _stderr(gaps),
            "wrong_tag_gap": _mean(wrong),
            "clip_win_rate": _mean([float(t.win) for t in mine]),
            "onset_gap": _mean([t.onset_gap for t in mine if t.onset_gap is not None]),
        }
    return out
