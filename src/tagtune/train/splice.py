"""Events moved by their recorded boundaries: spliced into replay clips, or cut out of tagged clips.

Splices: tags heard in the replay's voices and languages without new recordings.

A single-speaker English corpus never shows a tag in Chinese text or next to another voice; its replay clips
(many voices, both languages) are all untagged, so they teach "no events in Chinese" as firmly as the corpus
teaches "an event where the tag stands" (docs/transfer.md). A *splice* gives a replay clip one tag and one
event without any alignment: the event's codes are cut from a tagged fine-tune clip (its recorded event
boundaries), and they go where the replay text has a clear edge — after the clip, before it, or between it and
another clip of the same speaker — with the tag's text pieces at the same edge of the text. The speaker
reference stays the replay clip's own.

Cuts: a tagged clip once more with every event's codes cut out and every tag taken from its text — the same
words, voice and context without the event, so the model learns that the context alone makes no event (the
fine-tuned model's events on tag-free prompts, docs/transfer.md).

Every choice is drawn at mix time from the run's seed, and an item is a pure function of its index, so
resumed and multi-process runs see the same clips.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tagtune.audio import SAMPLES_PER_CODE, code_span, event_samples

END, START, BETWEEN = "end", "start", "between"


@dataclass(frozen=True)
class Splice:
    donor: int  # index of a tagged fine-tune clip in the primary dataset
    event: int  # which of its events (in time order, matched in order to its tags)
    layout: str  # END: replay clip, event; START: event, replay clip; BETWEEN: replay clip, event, partner
    partner: int | None = None  # for BETWEEN: a replay example index of the same speaker


def _matched_events(example: dict, tagset) -> list[dict] | None:
    """A tagged clip's events in time order when they match its tags one to one (None otherwise)."""
    events = sorted(example.get("events") or [], key=lambda x: x["start_sample"])
    if not example["has_tag"] or example.get("spliced") or not events or len(events) != len(example["tags"]):
        return None
    try:
        names = [tagset.resolve(str(x.get("tag", ""))) for x in events]
    except (ValueError, KeyError):
        return None
    return events if names == list(example["tags"]) else None


def _span(event: dict, n_codes: int, per_code: int) -> tuple[int, int]:
    return code_span(*event_samples(event), n_codes, per_code)


def _event_codes(example: dict, event: int, per_code: int) -> int:
    first, last = _span(sorted(example["events"], key=lambda x: x["start_sample"])[event], example["n_codes"], per_code)
    return last - first


def _donors(primary, tagset, per_code: int) -> list[tuple[int, int]]:
    """(example index, event number) for each event, of at least one code, of a clip whose events match its tags."""
    out = []
    for i, e in enumerate(primary.examples):
        for n, event in enumerate(_matched_events(e, tagset) or []):
            first, last = _span(event, e["n_codes"], per_code)
            if last > first:
                out.append((i, n))
    return out


def plan_splices(primary, replay, picks: list[int], share: float, tagset, seed: int,
                 per_code: int = SAMPLES_PER_CODE, at_end: float | None = None) -> dict[int, Splice]:
    """{position in ``picks``: Splice} for a seeded ``share`` of the replay picks ({} without tagged donors).

    A spliced clip holds no more text and no more codes than the longest clips of the mix, so batches and
    positions stay within what the prepared data already asks of the model; a BETWEEN partner is another
    untagged replay clip of the same speaker that fits. A pick too long for any layout stays as it is.
    ``at_end``: the share of splices that put the event after the clip (END), the rest split between the other
    layouts; None: the three layouts alike."""
    donors = _donors(primary, tagset, per_code)
    if share <= 0 or not donors:
        return {}
    mixed = list(primary.examples) + [replay.examples[j] for j in picks]
    max_text, max_codes = (max(e[key] for e in mixed) for key in ("n_text", "n_codes"))
    by_speaker: dict[str, list[int]] = {}
    for i, e in enumerate(replay.examples):
        if not e["has_tag"]:
            by_speaker.setdefault(e["speaker"], []).append(i)
    rng = random.Random(seed)
    out = {}
    for k, j in enumerate(picks):
        if rng.random() >= share:
            continue
        donor, event = donors[rng.randrange(len(donors))]
        a = replay.examples[j]
        text, codes = a["n_text"] + 2, a["n_codes"] + _event_codes(primary.examples[donor], event, per_code)
        if text > max_text or codes > max_codes:
            continue
        fits = [p for p in by_speaker.get(a["speaker"], []) if p != j
                and text + replay.examples[p]["n_text"] <= max_text
                and codes + replay.examples[p]["n_codes"] <= max_codes]
        if at_end is None:
            layout = rng.choice([END, START, BETWEEN] if fits else [END, START])
        else:
            layout = END if rng.random() < at_end else rng.choice([START, BETWEEN] if fits else [START])
        out[k] = Splice(donor, event, layout, rng.choice(fits) if layout == BETWEEN else None)
    return out


def spliced_example(example: dict, splice: Splice, primary, replay, tag_pieces: dict[str, list[int]],
                    per_code: int = SAMPLES_PER_CODE) -> dict:
    """The example record of a spliced replay clip (tag, lengths) for bucketing and the tagged/untagged split."""
    tag = primary.examples[splice.donor]["tags"][splice.event]
    n_text = example["n_text"] + len(tag_pieces[tag])
    n_codes = example["n_codes"] + _event_codes(primary.examples[splice.donor], splice.event, per_code)
    if splice.partner is not None:
        n_text += replay.examples[splice.partner]["n_text"]
        n_codes += replay.examples[splice.partner]["n_codes"]
    return {**example, "has_tag": True, "tags": [tag], "n_text": n_text, "n_codes": n_codes, "spliced": True}


def spliced_item(item: dict, donor: dict, splice: Splice, partner: dict | None,
                 tag_pieces: dict[str, list[int]]) -> dict:
    """``item`` (a replay clip) with the donor's event codes and the tag's pieces at the splice's edge."""
    per_code = int(item.get("samples_per_code", SAMPLES_PER_CODE))
    event = sorted(donor["events"], key=lambda x: x["start_sample"])[splice.event]
    tag = donor["tags"][splice.event]
    first, last = _span(event, len(donor["codes"]), per_code)
    event_codes = donor["codes"][first:last]
    pieces = torch.tensor(tag_pieces[tag], dtype=item["text_ids"].dtype)
    text, codes = item["text_ids"], item["codes"]
    if splice.layout == START:
        text, codes, onset = torch.cat([pieces, text]), torch.cat([event_codes, codes]), 0
    else:
        onset = len(codes)
        tail_text = partner["text_ids"] if partner is not None else text[:0]
        tail_codes = partner["codes"] if partner is not None else codes[:0]
        text, codes = torch.cat([text, pieces, tail_text]), torch.cat([codes, event_codes, tail_codes])
    # ceil(wav_len / per_code) == len(codes), as for a clip the encoder coded (the training loss keeps +1)
    wav_len = per_code * len(codes) - per_code // 2
    return {**item, "text_ids": text, "codes": codes, "wav_len": wav_len, "tags": [tag], "has_tag": True,
            "events": [{"tag": event["tag"], "start_sample": onset * per_code,
                        "end_sample": (onset + len(event_codes)) * per_code}]}


def _cut_spans(example: dict, n_codes: int, per_code: int) -> list[tuple[int, int]]:
    spans = sorted(_span(e, n_codes, per_code) for e in example["events"])
    return [(a, b) for a, b in spans if b > a]


def cut_item(item: dict, tag_pieces: dict[str, list[int]]) -> dict:
    """``item`` without its events' codes and without its tags' pieces (and nothing else changed)."""
    per_code = int(item.get("samples_per_code", SAMPLES_PER_CODE))
    codes = item["codes"]
    keep = torch.ones(len(codes), dtype=torch.bool)
    for a, b in _cut_spans(item, len(codes), per_code):
        keep[a:b] = False
    text = item["text_ids"].tolist()
    drop = set()
    for pieces in tag_pieces.values():  # the tag's piece, and the bare "▁" written before it when there is one
        for k, i in enumerate(text):
            if i == pieces[-1]:
                drop.add(k)
                if len(pieces) == 2 and k > 0 and text[k - 1] == pieces[0]:
                    drop.add(k - 1)
    text_ids = torch.tensor([i for k, i in enumerate(text) if k not in drop], dtype=item["text_ids"].dtype)
    codes = codes[keep]
    return {**item, "text_ids": text_ids, "codes": codes, "wav_len": per_code * len(codes) - per_code // 2,
            "tags": [], "has_tag": False, "events": None}


class WithEventCuts:
    """A training dataset with cut copies (``cut_item``) of a seeded ``share`` of its tagged clips appended.

    Reads like the dataset it wraps (``examples``, ``lengths``, items); indices below ``len(dataset)`` are its own.
    """

    def __init__(self, dataset, share: float, tagset, tag_pieces: dict[str, list[int]], seed: int,
                 per_code: int = SAMPLES_PER_CODE):
        self.dataset, self.tag_pieces = dataset, tag_pieces
        rng = random.Random(seed)
        self.picks = [i for i, e in enumerate(dataset.examples) if _matched_events(e, tagset) is not None
                      and rng.random() < share]
        cut_examples = []
        for i in self.picks:
            e = dataset.examples[i]
            n_codes = e["n_codes"] - sum(b - a for a, b in _cut_spans(e, e["n_codes"], per_code))
            n_text = e["n_text"] - sum(len(tag_pieces[t]) for t in e["tags"])
            cut_examples.append({**e, "has_tag": False, "tags": [], "events": None, "n_codes": n_codes,
                                 "n_text": n_text, "cut": True})
        self.examples = list(dataset.examples) + cut_examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        n = len(self.dataset)
        return self.dataset[i] if i < n else cut_item(self.dataset[self.picks[i - n]], self.tag_pieces)

    def lengths(self) -> list[int]:
        return [e["n_text"] + e["n_codes"] for e in self.examples]
