"""Deterministic train/val split (stratified by tag) and the choice of each example's reference clip.

Both depend only on the seed and each example's identity (record index + source id), never on the order
in which processes finished, so one process and N processes produce the same data directory.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict

TRAIN, VAL = "train", "val"
COND_OTHER = "other"  # a different clip of the same speaker (the default: no prompt copying)
COND_SELF = "self"
COND_SELF_FALLBACK = "self_fallback"  # "other" was asked but the speaker has a single clip


def _key(seed: int, example: dict) -> str:
    return hashlib.sha256(f"{seed}:{example['index']}:{example['source_id']}".encode()).hexdigest()


def stratified_split(examples: list[dict], val_fraction: float, seed: int, min_tag_count: int = 2) -> list[str]:
    """Return "train"/"val" per example.

    Every tag seen at least ``min_tag_count`` times gets one example in val (the rarest tags pick first),
    the rest of val is filled in seeded-hash order, and no pick may take a tag's last train occurrence.
    """
    order = sorted(range(len(examples)), key=lambda i: _key(seed, examples[i]))
    left = Counter(t for e in examples for t in set(e["tags"]))  # train occurrences still available
    n_val = round(len(examples) * val_fraction)
    val: set[int] = set()

    def take(i: int) -> bool:
        if i in val or any(left[t] <= 1 for t in set(examples[i]["tags"])):
            return False
        val.add(i)
        left.subtract(set(examples[i]["tags"]))
        return True

    for tag, count in sorted(left.items(), key=lambda kv: (kv[1], kv[0])):
        if count >= min_tag_count and not any(tag in examples[i]["tags"] for i in val):
            next((i for i in order if tag in examples[i]["tags"] and take(i)), None)
    for i in order:
        if len(val) >= n_val:
            break
        take(i)
    return [VAL if i in val else TRAIN for i in range(len(examples))]


def assign_references(examples: list[dict], splits: list[str], mode: str, seed: int) -> list[tuple[int, str]]:
    """Pick each example's conditioning clip: ``(example index of the reference, how it was chosen)``.

    ``mode="other"`` draws a different clip of the same speaker, preferring the same split (so validation
    audio does not leak into training inputs); ``mode="self"`` uses the clip itself.
    """
    if mode not in (COND_OTHER, COND_SELF):
        raise ValueError(f"conditioning mode must be '{COND_OTHER}' or '{COND_SELF}', got {mode!r}")
    by_speaker: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_speaker[e["speaker"], splits[i]].append(i)
        by_speaker[e["speaker"], "*"].append(i)
    out = []
    for i, e in enumerate(examples):
        if mode == COND_SELF:
            out.append((i, COND_SELF))
            continue
        same_split = [j for j in by_speaker[e["speaker"], splits[i]] if j != i]
        pool = same_split or [j for j in by_speaker[e["speaker"], "*"] if j != i]
        if not pool:
            out.append((i, COND_SELF_FALLBACK))
            continue
        out.append((random.Random(_key(seed, e)).choice(pool), COND_OTHER))
    return out


# IndexTTS-2's GPT also reads an emotion vector. Taken from the tagged target itself, it would carry the event
# (a giggle) and the model would learn it from the vector instead of from the tag; so it never is.
EMO_PROMPT = "prompt"  # the speaker prompt clip (another clip, untagged)
EMO_OTHER = "other_untagged"  # another untagged clip of the same speaker (the prompt clip is tagged)
EMO_PROMPT_TAGGED = "prompt_tagged"  # the speaker has no other untagged clip: the (tagged) prompt clip
EMO_SELF = "self_untagged"  # an untagged clip that is its speaker's only clip: its own (tag-free) emotion
EMO_NONE = "none"  # a tagged clip that is its speaker's only clip: no emotion input can be used
EMOTION_MODES = ("prompt",)  # the one policy so far; a recipe names it (``PrepareSettingsV2.emotion``)


def assign_emotions(examples: list[dict], splits: list[str], refs: list[tuple[int, str]],
                    seed: int) -> list[tuple[int | None, str]]:
    """Pick each example's emotion clip: ``(example index or None, how it was chosen)``.

    The speaker prompt clip ``refs[i]`` when it is another, untagged clip; else another untagged clip of the
    speaker (same split preferred); else the tagged prompt clip; an untagged clip alone may use itself. A tagged
    clip is never its own emotion clip.
    """
    untagged: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if not e["tags"]:
            untagged[e["speaker"], splits[i]].append(i)
            untagged[e["speaker"], "*"].append(i)
    out: list[tuple[int | None, str]] = []
    for i, e in enumerate(examples):
        ref = refs[i][0]
        if ref != i and not examples[ref]["tags"]:
            out.append((ref, EMO_PROMPT))
            continue
        pool = ([j for j in untagged[e["speaker"], splits[i]] if j != i]
                or [j for j in untagged[e["speaker"], "*"] if j != i])
        if pool:
            out.append((random.Random("emotion:" + _key(seed, e)).choice(pool), EMO_OTHER))
        elif ref != i:
            out.append((ref, EMO_PROMPT_TAGGED))
        elif not e["tags"]:
            out.append((i, EMO_SELF))
        else:
            out.append((None, EMO_NONE))
    return out
