"""The merge step: finished shards -> split, reference choice, ``examples.jsonl``, ``rejected.jsonl``,
``manifest.json``. Runs once (main process) after every shard exists; it reads only shard metadata.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import tagtune
from tagtune.data.pipeline import ShardJob
from tagtune.data.shards import ShardError, atomic_write_text, shard_meta
from tagtune.data.split import EMO_NONE, TRAIN, VAL, assign_emotions, assign_references, stratified_split
from tagtune.folders import EXAMPLES_FILE, MANIFEST_FILE, REJECTED_FILE

SECONDS_PER_HOUR = 3600.0
DUPLICATE = "duplicate"  # rejection reason: the same audio bytes and text as an earlier clip
LISTED_IDS = 10  # conflicting ids named in the warning (all of them go to the manifest)

log = logging.getLogger(__name__)


def _collect(jobs: list[ShardJob]) -> tuple[list[dict], list[dict]]:
    """All accepted examples (with shard/row) and all rejections, in source order."""
    examples, rejected = [], []
    for job in jobs:
        meta = shard_meta(job.path)
        if meta.get("fingerprint") != job.fingerprint:
            raise ShardError(f"{job.path}: stale (made from other records or settings); prepare again to remake it")
        for row, e in enumerate(meta["examples"]):
            examples.append({**e, "shard": job.path.name, "row": row})
        rejected.extend(meta["rejected"])
    return examples, rejected


def drop_duplicates(examples: list[dict], rejected: list[dict]) -> tuple[list[dict], list[str]]:
    """Examples without exact duplicates (same audio bytes and text as an earlier one), and the ids that
    name clips of different content.

    Each duplicate becomes a ``duplicate`` rejection in ``rejected`` (kept in source order), so a clip listed
    twice cannot land in both train and validation. Clips sharing an id but differing in audio or text are
    all kept; their ids are returned so the caller can report them.
    """
    first: dict[tuple[str, str], dict] = {}
    kept = []
    for e in examples:
        key = (e.get("audio_sha256") or f"#{e['index']}", e["text"])  # shards of old versions have no digest
        if key in first:
            rejected.append({"index": e["index"], "source_id": e["source_id"], "reason": DUPLICATE,
                             "detail": f"same audio and text as record {first[key]['index']} "
                                       f"({first[key]['source_id']})"})
        else:
            first[key] = e
            kept.append(e)
    rejected.sort(key=lambda r: r["index"])
    contents: dict[str, set] = defaultdict(set)
    for e in kept:
        contents[e["source_id"]].add((e.get("audio_sha256"), e["text"]))
    return kept, sorted(i for i, c in contents.items() if len(c) > 1)


def _warn_duplicates(rejected: list[dict], conflicting: list[str]) -> None:
    if n := sum(r["reason"] == DUPLICATE for r in rejected):
        log.warning("dropped %d duplicate clip(s): the same audio and text as an earlier one (see %s)", n,
                    REJECTED_FILE)
    if conflicting:
        shown = ", ".join(conflicting[:LISTED_IDS]) + (", ..." if len(conflicting) > LISTED_IDS else "")
        log.warning("%d id(s) name clips with different audio or text, all kept: %s", len(conflicting), shown)


def _tag_counts(examples: list[dict]) -> dict[str, dict[str, int]]:
    """Per tag: examples containing it, overall and per split."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        for tag in sorted(set(e["tags"])):
            c = out.setdefault(tag, {"total": 0, TRAIN: 0, VAL: 0})
            c["total"] += 1
            c[e["split"]] += 1
    return dict(sorted(out.items()))


def _hours(examples: list[dict], split: str | None = None) -> float:
    return round(sum(e["seconds"] for e in examples if split in (None, e["split"])) / SECONDS_PER_HOUR, 6)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _emotion_inputs(examples: list[dict], splits: list[str], refs, settings) -> dict:
    """IndexTTS-2 data (settings with an ``emotion`` policy): give each example its emotion clip (``emo``,
    ``emo_mode``, ``emo_shard``, ``emo_row``; None where no clip may be used) and return the manifest's
    count per choice. 1.x data has no emotion input: nothing changes."""
    if getattr(settings, "emotion", None) is None:
        return {}
    picks = assign_emotions(examples, splits, refs, settings.seed)
    for e, (emo, how) in zip(examples, picks):
        e.update(emo=emo, emo_mode=how, emo_shard=None if emo is None else examples[emo]["shard"],
                 emo_row=None if emo is None else examples[emo]["row"])
    counts = Counter(how for _, how in picks)
    if counts[EMO_NONE]:
        log.warning("%d tagged clip(s) are their speaker's only clip: no emotion input that is not the clip "
                    "itself; training leaves them out (emo_mode %r)", counts[EMO_NONE], EMO_NONE)
    return {"emotion": dict(sorted(counts.items()))}


def merge(data_dir: Path, jobs: list[ShardJob], run: dict, settings, base_checkpoint_hash: str | None,
          extra: dict | None = None) -> dict:
    """Write the index files and return the manifest."""
    examples, rejected = _collect(jobs)
    examples, conflicting = drop_duplicates(examples, rejected)
    _warn_duplicates(rejected, conflicting)
    splits = stratified_split(examples, settings.val_fraction, settings.seed, settings.min_tag_count)
    refs = assign_references(examples, splits, settings.cond_mode, settings.seed)
    for i, e in enumerate(examples):
        ref, how = refs[i]
        e.update(id=i, split=splits[i], has_tag=bool(e["tags"]), cond=ref, cond_mode=how,
                 cond_shard=examples[ref]["shard"], cond_row=examples[ref]["row"])
    emotion = _emotion_inputs(examples, splits, refs, settings)
    atomic_write_text(data_dir / EXAMPLES_FILE, _jsonl(examples))
    atomic_write_text(data_dir / REJECTED_FILE, _jsonl(rejected))
    manifest = {
        "tagtune_version": tagtune.__version__,
        "base_checkpoint_hash": base_checkpoint_hash,
        "source": {"name": run["source"], "records": run["records"], "fingerprint": run["source_fingerprint"]},
        "settings": run["settings"],
        "encoders": run["encoders"],
        "settings_fingerprint": run["settings_fingerprint"],
        "counts": {"records": run["records"], "accepted": len(examples), "rejected": len(rejected),
                   TRAIN: splits.count(TRAIN), VAL: splits.count(VAL), "tagged": sum(e["has_tag"] for e in examples)},
        "hours": {"total": _hours(examples), TRAIN: _hours(examples, TRAIN), VAL: _hours(examples, VAL)},
        "tags": _tag_counts(examples),
        "rejections": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "conditioning": dict(sorted(Counter(e["cond_mode"] for e in examples).items())),
        **emotion,
        "conflicting_ids": conflicting,  # ids of several clips with different audio or text (all kept)
        "shards": [j.path.name for j in jobs],
        **(extra or {}),
    }
    atomic_write_text(data_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest
