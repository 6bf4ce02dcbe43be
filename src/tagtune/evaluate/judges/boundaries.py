"""Event boundaries for corpora that do not record them: where each tag's event sounds in its clip.

Training moves events by their boundaries (``augment.event_cuts``, ``replay.events``). The synthetic corpus
records them; a real corpus such as Elise has only text like "Seriously? <giggles> That's cute!". Here the
AudioSet events judge (``events.py``) listens to every tagged clip and ``find_boundaries`` writes an *events
file*, JSONL with one line per clip that got boundaries::

    {"id": "<source_id>", "events": [{"tag": "<giggles>", "start_sample": 17600, "end_sample": 33600,
                                      "sample_rate": 16000}]}

one event per tag of the clip's text, in text order, in the samples of the clip decoded at ``sample_rate``.
``tagtune prepare --events FILE`` lays them onto the corpus's clips by id (``data.sources.with_events``).

Why a pretrained AudioSet tagger: AudioSet labels laughter, giggles, sighs, breathing or coughs in recordings of
many people, so the tagger hears these events in a new corpus with nothing to learn from it, whereas the
code-level detector (``detector.py``) has to be trained on known boundaries, the very thing missing here. Only
its thresholds are fitted to the corpus: clips carrying a tag against untagged clips (``calibrate``).

How: each tag of a clip takes one run of at least MIN_RUN_WINDOWS windows where its own probability stays over
its threshold; the runs keep the tags' text order, and among the orders possible the runs closest to where the
text puts each tag (its share of the spoken characters times the clip's duration) win (``ordered_assignment``).

Limits:

* resolution: the tagger hears WINDOW_S of audio every HOP_S and a run of windows stands for the HOP_S around
  each window's centre, so a boundary is known to a window step at best. A window that hears only part of an
  event may still light up, so a span can come out wider by up to (WINDOW_S - HOP_S) / 2 on each side (0.375 s
  with the shipped values), and an event in the first or last that much of a clip, which only one window hears,
  starts before (ends after) its span by up to as much;
* misses: a tag whose classes stay under its threshold (a quiet or short event, or one unlike AudioSet's
  examples), two events of one tag less than a window apart (one run for both), or a tag none of whose classes
  the model knows: the clip gets no events at all (counted as not found), never a guessed one;
* the text position only chooses among runs the tagger found; it never makes one.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagtune.atomic import atomic_write_text, check_writable
from tagtune.data.decode import DecodeSettings, Rejection, decode_clip_info
from tagtune.data.sources import ColumnMap, Record, Source, open_source
from tagtune.errors import UserError
from tagtune.evaluate.detector import active_runs
from tagtune.evaluate.judges.base import Speech
from tagtune.evaluate.judges.events import (
    BATCH_WINDOWS,
    HOP_S,
    MIN_RUN_WINDOWS,
    WINDOW_S,
    AudioSetEventJudge,
    load_event_map,
)
from tagtune.evaluate.judges.hub import DEFAULT_EVENT_MODEL
from tagtune.tags import TagSet, UnknownTagError, find_tags, infer_tagset

log = logging.getLogger(__name__)

CALIBRATION_CLIPS = 64  # clips per tag, and untagged clips, that calibrate the thresholds
MIN_CALIBRATION_CLIPS = 4  # fewer clips with a tag than this: its default threshold is kept
CLIPS_PER_CHUNK = 32  # tagged clips decoded and judged at a time (bounds memory on a large corpus)
NO_LENGTH_LIMIT = 10**9  # codes: every clip is judged, whatever prepare's model later accepts


class BoundaryError(UserError):
    """A corpus whose event boundaries cannot be looked for (no tagged text)."""


@dataclass(frozen=True)
class TaggedClip:
    """A clip whose text carries tags: its canonical tags in text order and where each stands in the text."""

    index: int  # in the source's records
    source_id: str
    tags: tuple[str, ...]
    positions: tuple[float, ...]  # share of the spoken characters before each tag, 0..1


@dataclass(frozen=True)
class Placement:
    """One run of windows per tag, in seconds, or the first tag that got none."""

    spans: list[tuple[float, float]]  # (start, end) per tag in text order; empty when a tag was missed
    missed: int | None = None  # index in text order of the first tag no run could be given


def _spoken(text: str) -> int:
    return sum(not c.isspace() for c in text)


def tag_positions(text: str, tagset: TagSet) -> tuple[list[str], list[float]]:
    """The canonical tags of ``text`` in order, and where each stands: the share of the spoken (non-space,
    outside tags) characters that come before it. Tags the tag set drops or does not know are left out."""
    tags, before, spoken, cursor = [], [], 0, 0
    for match in find_tags(text, tagset.delimiters):
        spoken += _spoken(text[cursor : match.start])
        cursor = match.end
        try:
            tag = tagset.resolve(match.raw)
        except UnknownTagError:
            tag = None
        if tag is not None:
            tags.append(tag)
            before.append(spoken)
    total = spoken + _spoken(text[cursor:])
    return tags, [b / total if total else 0.5 for b in before]


def split_corpus(records: list[Record], tagset: TagSet) -> tuple[list[TaggedClip], list[int]]:
    """The clips whose text carries known tags, and the indices of clips whose text carries no tag at all."""
    tagged, untagged = [], []
    for i, rec in enumerate(records):
        if rec.error or not isinstance(rec.text, str):
            continue
        tags, positions = tag_positions(rec.text, tagset)
        if tags:
            tagged.append(TaggedClip(i, rec.source_id, tuple(tags), tuple(positions)))
        elif not find_tags(rec.text, tagset.delimiters):
            untagged.append(i)
    return tagged, untagged


def candidate_runs(column: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(first, stop) windows of every run of at least MIN_RUN_WINDOWS windows at or over ``threshold``."""
    return [(s, e) for s, e in active_runs((column >= threshold).tolist()) if e - s >= MIN_RUN_WINDOWS]


def run_seconds(run: tuple[int, int], seconds: float) -> tuple[float, float]:
    """The audio a run of windows stands for: each window the HOP_S around its centre. At a clip's edges this
    leaves out up to (WINDOW_S - HOP_S) / 2 that only the first (last) window hears: an event there may start
    before (end after) its span by that much, as much as it might start later if the span took it in."""
    first, stop = run
    return first * HOP_S + (WINDOW_S - HOP_S) / 2, min(seconds, (stop - 1) * HOP_S + (WINDOW_S + HOP_S) / 2)


def ordered_assignment(candidates: list[list[tuple[float, float]]], expected: list[float]) -> list[int] | int:
    """One span per tag, each starting where the previous tag's ended or later, with the smallest total distance
    from each tag's expected time to its span (0 inside it).

    ``candidates[t]`` are tag t's spans in time order, ``expected[t]`` its expected time. Returns the chosen span
    index per tag, or, when no ordered choice exists, the index of the first tag that cannot follow the others.
    """
    # dynamic programme over the tags: one state per span the current tag may take, holding the cheapest
    # placement of the tags so far that ends with that span (its cost and the spans chosen)
    states: list[tuple[float, list[int]]] = [(0.0, [])]
    for t, (spans, at) in enumerate(zip(candidates, expected)):
        following = []
        for k, (start, end) in enumerate(spans):
            before = [s for s in states if not s[1] or candidates[t - 1][s[1][-1]][1] <= start]
            if before:
                cost, chosen = min(before, key=lambda s: s[0])
                following.append((cost + max(0.0, start - at, at - end), [*chosen, k]))
        if not following:
            return t
        states = following
    return min(states, key=lambda s: s[0])[1]


def place_tags(probs: np.ndarray, tags: list[str], columns: list[str], thresholds: dict[str, float],
               expected: list[float], seconds: float) -> Placement:
    """Place a clip's ``tags`` (text order) on its (windows, columns) probabilities; ``columns`` names the
    judge's tags in column order (a tag not among them cannot be heard, so it is missed)."""
    candidates = []
    for tag in tags:
        runs = candidate_runs(probs[:, columns.index(tag)], thresholds[tag]) if tag in columns else []
        candidates.append([run_seconds(r, seconds) for r in runs])
    choice = ordered_assignment(candidates, expected)
    if isinstance(choice, int):
        return Placement([], choice)
    return Placement([candidates[t][k] for t, k in enumerate(choice)])


def events_in_samples(tags: tuple[str, ...], spans: list[tuple[float, float]], n_samples: int, rate: int) -> list[dict]:
    """The events-file form of placed tags: boundaries in the decoded clip's samples at ``rate``."""
    return [{"tag": tag, "start_sample": round(start * rate), "end_sample": min(n_samples, round(end * rate)),
             "sample_rate": rate} for tag, (start, end) in zip(tags, spans)]


def _decoded(source: Source, indices: list[int], rate: int) -> dict[int, Speech | Rejection]:
    """Clips fetched through the source and decoded as prepare decodes them (mono, resampled), at ``rate``."""
    settings = DecodeSettings(sample_rate=rate, min_seconds=0.0, max_codes=NO_LENGTH_LIMIT)
    out: dict[int, Speech | Rejection] = {}
    for i in indices:
        clip = decode_clip_info(source.audio(i, i + 1)[0], settings)
        out[i] = clip if isinstance(clip, Rejection) else Speech(clip.wav, rate)
    return out


def _sample(indices: list[int], limit: int, rng: random.Random) -> list[int]:
    return sorted(rng.sample(indices, limit)) if len(indices) > limit else list(indices)


def calibrate_on_corpus(judge: AudioSetEventJudge, source: Source, clips: list[TaggedClip], untagged: list[int],
                        limit: int = CALIBRATION_CLIPS, seed: int = 0) -> tuple[dict, dict[int, np.ndarray]]:
    """Set the judge's thresholds on the corpus: up to ``limit`` clips carrying each tag against as many untagged
    ones. A tag on fewer than MIN_CALIBRATION_CLIPS clips keeps its default threshold (with a warning).

    Returns the calibration report and the ``frame_probs`` of the tagged clips it judged, by corpus index:
    thresholds do not change them, so ``locate_events`` reuses them instead of judging those clips again."""
    rng = random.Random(seed)
    with_tag = {t: [c.index for c in clips if t in c.tags] for t in judge.tags}
    picked = {t: _sample(ix, limit, rng) if len(ix) >= MIN_CALIBRATION_CLIPS else [] for t, ix in with_tag.items()}
    negatives = _sample(untagged, limit, rng)
    audio = _decoded(source, sorted({i for ix in picked.values() for i in ix} | set(negatives)), judge.rate)
    heard = [i for i in audio if isinstance(audio[i], Speech)]
    probs = dict(zip(heard, judge.frame_probs([audio[i] for i in heard])))

    def judged(indices: list[int]) -> list[np.ndarray]:
        return [probs[i] for i in indices if i in probs]

    report = judge.calibrate_on_probs({t: judged(ix) for t, ix in picked.items()}, judged(negatives), seed)
    for tag, entry in report["per_tag"].items():
        entry["clips_with_tag"] = len(with_tag[tag])
        if not entry["calibrated"]:
            log.warning("%s: default threshold %.2f kept (%d clips carry it, %d untagged clips; calibration needs "
                        "%d and 2)", tag, entry["threshold"], len(with_tag[tag]), len(negatives), MIN_CALIBRATION_CLIPS)
    tagged = {i for ix in picked.values() for i in ix}
    return report, {i: p for i, p in probs.items() if i in tagged}


def locate_events(judge: AudioSetEventJudge, source: Source, clips: list[TaggedClip], progress: bool = False,
                  judged: dict[int, np.ndarray] | None = None) -> tuple[dict[str, list[dict]], Counter, int]:
    """({source_id: events} of the clips every tag of which got a run, {tag: clips it was missed in}, clips
    whose audio could not be decoded). ``judged``: ``frame_probs`` already computed, by corpus index."""
    from tqdm.auto import tqdm

    judged = dict(judged or {})  # taken from as clips are placed: the caller's dict stays as it was
    found, missed, unreadable = {}, Counter(), 0
    with tqdm(total=len(clips), desc="event boundaries", unit="clip", disable=not progress) as bar:
        for s in range(0, len(clips), CLIPS_PER_CHUNK):
            chunk = clips[s : s + CLIPS_PER_CHUNK]
            audio = _decoded(source, [c.index for c in chunk], judge.rate)
            heard = [c for c in chunk if isinstance(audio[c.index], Speech)]
            unreadable += len(chunk) - len(heard)
            fresh = [c for c in heard if c.index not in judged]
            judged.update(zip((c.index for c in fresh), judge.frame_probs([audio[c.index] for c in fresh])))
            for clip in heard:
                speech, probs = audio[clip.index], judged.pop(clip.index)
                expected = [p * speech.seconds for p in clip.positions]
                placed = place_tags(probs, list(clip.tags), judge.tags, judge.thresholds, expected, speech.seconds)
                if placed.missed is None:
                    found[clip.source_id] = events_in_samples(clip.tags, placed.spans, len(speech.audio), speech.rate)
                else:
                    missed[clip.tags[placed.missed]] += 1
            bar.update(len(chunk))
    return found, missed, unreadable


def write_events_file(path: str | Path, found: dict[str, list[dict]]) -> None:
    """One JSON line ``{"id", "events"}`` per clip, written atomically."""
    lines = [json.dumps({"id": clip_id, "events": events}, ensure_ascii=False) for clip_id, events in found.items()]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def find_boundaries(corpus: str | Path, out: str | Path, *, kind: str = "auto", columns: ColumnMap | None = None,
                    event_model: str = DEFAULT_EVENT_MODEL, event_map: str | Path | None = None, tag_map=None,
                    multiword: str = "own", device: str = "cpu", calibration_clips: int = CALIBRATION_CLIPS,
                    seed: int = 0, batch_size: int = BATCH_WINDOWS, progress: bool = True) -> dict:
    """Find the event boundaries of every tagged clip of ``corpus`` and write them to the events file ``out``.

    ``kind`` and ``columns`` open the corpus as ``prepare`` does; ``tag_map`` and ``multiword`` read its tags as
    ``prepare`` does; ``event_model`` is a hub id or a folder, ``event_map`` a YAML tag -> AudioSet classes added
    to the shipped map. Returns a summary: clips tagged, with boundaries, unreadable; per tag the clips carrying
    it, those that got boundaries and those it was not found in; the thresholds and the calibration report.
    """
    if calibration_clips < MIN_CALIBRATION_CLIPS:
        raise BoundaryError(f"calibration needs at least {MIN_CALIBRATION_CLIPS} clips per tag, got "
                            f"{calibration_clips}", params=("calibration_clips",))
    out = Path(out)
    check_writable(out, param="out")
    source = open_source(corpus, kind=kind, columns=columns)
    records = source.records()
    tagset = infer_tagset([r.text for r in records if isinstance(r.text, str)], tag_map=tag_map, multiword=multiword)
    clips, untagged = split_corpus(records, tagset)
    if not clips:
        raise BoundaryError(f"corpus {source.name}: no text carries a tag, so there are no event boundaries to find")
    ids = Counter(r.source_id for r in records)
    shared = [c for c in clips if ids[c.source_id] > 1]
    if shared:
        log.warning("%d tagged clips share their id with another clip: left out (an events file finds clips by id)",
                    len(shared))
        clips = [c for c in clips if ids[c.source_id] == 1]
    judge = AudioSetEventJudge.load(event_model, tagset.tags, load_event_map(event_map), device=device,
                                    batch_size=batch_size)
    calibration, judged = calibrate_on_corpus(judge, source, clips, untagged, calibration_clips, seed)
    found, missed, unreadable = locate_events(judge, source, clips, progress, judged)
    write_events_file(out, found)
    per_tag = {tag: {"clips": sum(tag in c.tags for c in clips),
                     "found": sum(tag in c.tags and c.source_id in found for c in clips),
                     "not_found": missed[tag]} for tag in tagset.tags}
    return {"corpus": source.name, "out": str(out), "event_model": event_model, "clips": len(records),
            "tagged": len(clips), "with_boundaries": len(found), "unreadable": unreadable,
            "shared_ids": len(shared), "unheard_tags": [t for t in tagset.tags if t not in judge.tags],
            "per_tag": per_tag, "thresholds": dict(judge.thresholds), "calibration": calibration}


def summary_line(summary: dict) -> str:
    """One line for the terminal: clips with boundaries, and per tag the clips found and not found."""
    tags = ", ".join(f"{tag} {n['found']} found, {n['not_found']} not found" for tag, n in summary["per_tag"].items())
    notes = [f"{summary['unreadable']} unreadable"] if summary["unreadable"] else []
    notes += [f"default threshold for {tag}: too few clips to calibrate"
              for tag, entry in summary["calibration"]["per_tag"].items() if not entry["calibrated"]]
    notes += [f"{tag} not heard: the event model knows none of its classes" for tag in summary["unheard_tags"]]
    return (f"event boundaries for {summary['with_boundaries']} of {summary['tagged']} tagged clips ({tags})"
            + (f"; {'; '.join(notes)}" if notes else ""))
