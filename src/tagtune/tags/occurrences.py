"""Where a clip's tags sit in its text and which codes their events cover: the trials of tag reliance
(``evaluate.reliance``), the prompts of the free-running check (``evaluate.freerun``) and the contrast texts of
training (``train.contrast``) all read a tag through these.

The k-th tag of a clip's text is the k-th event of its recording when the corpus knows the events' boundaries
and their tags agree in order; the event's code span is then the codes overlapping those boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tagtune.audio import SAMPLES_PER_CODE, code_span, event_samples
from tagtune.tags.vocab import TagError, TagSet


@dataclass
class Occurrence:
    """One tag in one clip's text, with the code span of its event when the corpus knows it."""

    clip: int  # index into the clip list
    tag: str
    position: int  # index of the tag id in text_ids
    span: tuple[int, int] | None  # codes [first, last) of the event
    onset_fraction: float  # where in the clip the event starts (boundaries) or the tag sits (text)


def _event_tag(event: dict, tags: TagSet) -> str | None:
    try:
        return tags.resolve(str(event.get("tag", "")))
    except (TagError, ValueError):
        return None


def _event_samples(event: dict, wav_len: int) -> tuple[int, int]:
    start, end = event_samples(event)
    return start, min(wav_len, end)


def occurrences(item: dict, clip: int, tags: TagSet, tag_ids: dict[str, int]) -> list[Occurrence]:
    """The tag occurrences of a prepared example; events are matched to tags in order when they agree."""
    by_id = {i: t for t, i in tag_ids.items()}
    ids = item["text_ids"].tolist()
    found = [(k, by_id[i]) for k, i in enumerate(ids) if i in by_id]
    events = sorted(item.get("events") or [], key=lambda e: e["start_sample"])
    events = [e for e in events if _event_tag(e, tags) is not None]
    matched = len(events) == len(found) and all(_event_tag(e, tags) == t for e, (_, t) in zip(events, found))
    n_codes, wav_len = len(item["codes"]), max(1, int(item["wav_len"]))
    per_code = item.get("samples_per_code", SAMPLES_PER_CODE)  # IndexTTS-2 items name their code rate
    out = []
    for n, (k, tag) in enumerate(found):
        if matched:
            start, end = _event_samples(events[n], wav_len)
            out.append(Occurrence(clip, tag, k, code_span(start, end, n_codes, per_code), start / wav_len))
        else:
            out.append(Occurrence(clip, tag, k, None, k / max(1, len(ids))))
    return out


def without_tag(text_ids: torch.Tensor, position: int, space_id: int | None) -> torch.Tensor:
    """The ids with the tag at ``position`` removed, and the bare "▁" piece sentencepiece put before it."""
    first = position - 1 if position > 0 and space_id is not None and int(text_ids[position - 1]) == space_id \
        else position
    return torch.cat([text_ids[:first], text_ids[position + 1 :]])


def with_other_tag(text_ids: torch.Tensor, position: int, tag_id: int) -> torch.Tensor:
    """The ids with another tag id at the same position."""
    out = text_ids.clone()
    out[position] = tag_id
    return out
