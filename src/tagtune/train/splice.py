"""Events spliced into replay clips: tags heard in the replay's voices and languages without new recordings.

A single-speaker English corpus never shows a tag in Chinese text or next to another voice; its replay clips
(many voices, both languages) are all untagged, so they teach "no events in Chinese" as firmly as the corpus
teaches "an event where the tag stands" (docs/transfer.md). A *splice* gives a replay clip one tag and one
event without any alignment: the event's codes are cut from a tagged fine-tune clip (its recorded event
boundaries), and they go where the replay text has a clear edge — after the clip, before it, or between it and
another clip of the same speaker — with the tag's text pieces at the same edge of the text. The speaker
reference stays the replay clip's own.

Every choice is drawn at mix time from the run's seed, and an item is a pure function of its index, so
resumed and multi-process runs see the same clips.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tagtune.audio import SAMPLES_PER_CODE

END, START, BETWEEN = "end", "start", "between"


@dataclass(frozen=True)
class Splice:
    donor: int  # index of a tagged fine-tune clip in the primary dataset
    event: int  # which of its events (in time order, matched in order to its tags)
    layout: str  # END: replay clip, event; START: event, replay clip; BETWEEN: replay clip, event, partner
    partner: int | None = None  # for BETWEEN: a replay example index of the same speaker


def _event_codes(example: dict, event: int, per_code: int) -> int:
    e = sorted(example["events"], key=lambda x: x["start_sample"])[event]
    return max(1, -(-e["end_sample"] // per_code) - e["start_sample"] // per_code)


def _donors(primary, tagset) -> list[tuple[int, int, str]]:
    """(example index, event number, canonical tag) for each event of a tagged clip whose events match its tags."""
    out = []
    for i, e in enumerate(primary.examples):
        events = sorted(e.get("events") or [], key=lambda x: x["start_sample"])
        if not e["has_tag"] or not events or len(events) != len(e["tags"]):
            continue
        try:
            names = [tagset.resolve(str(x.get("tag", ""))) for x in events]
        except (ValueError, KeyError):
            continue
        if names == list(e["tags"]):
            out += [(i, n, tag) for n, tag in enumerate(names)]
    return out


def plan_splices(primary, replay, picks: list[int], share: float, tagset, seed: int,
                 per_code: int = SAMPLES_PER_CODE) -> dict[int, Splice]:
    """{position in ``picks``: Splice} for a seeded ``share`` of the replay picks ({} without tagged donors).

    A spliced clip holds no more text and no more codes than the longest clips of the mix, so batches and
    positions stay within what the prepared data already asks of the model; a BETWEEN partner is another
    untagged replay clip of the same speaker that fits. A pick too long for any layout stays as it is."""
    donors = _donors(primary, tagset)
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
        donor, event, _ = donors[rng.randrange(len(donors))]
        a = replay.examples[j]
        text, codes = a["n_text"] + 2, a["n_codes"] + _event_codes(primary.examples[donor], event, per_code)
        if text > max_text or codes > max_codes:
            continue
        fits = [p for p in by_speaker.get(a["speaker"], []) if p != j
                and text + replay.examples[p]["n_text"] <= max_text
                and codes + replay.examples[p]["n_codes"] <= max_codes]
        layout = rng.choice([END, START, BETWEEN] if fits else [END, START])
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
    first = event["start_sample"] // per_code
    last = max(first + 1, min(len(donor["codes"]), -(-event["end_sample"] // per_code)))
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
