"""``tagtune prepare``: a corpus -> DATA_DIR of memory-mappable shards, a manifest and the rejections.

Resumable: each shard file carries a fingerprint of its records and of the settings; finished shards are
reused. ``prepare.json`` records what the directory was built from, so a later run with other inputs or
settings stops with an explanation instead of mixing two datasets. Under ``accelerate launch`` every process
takes every world_size-th shard and the main process merges.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from tagtune.data.decode import DecodeSettings
from tagtune.errors import UserError
from tagtune.data.encode import ClipEncoder, TextEncoder
from tagtune.data.merge import merge
from tagtune.data.pipeline import ShardJob, cond_frames, run_shard
from tagtune.data.shards import SHARD_DIR, atomic_write_text, fingerprint, read_shard_meta, shard_path
from tagtune.data.sources import Source

RUN_FILE = "prepare.json"
MAX_COND_FRAMES = 9999  # the conformer's 5000 sinusoid positions after 2x subsampling
MIN_COND_FRAMES = 3  # Conv2dSubsampling2 needs a 3-frame kernel


class DataDirMismatch(UserError, RuntimeError):
    """DATA_DIR was prepared from other inputs or settings."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes the prepared data (all of it enters the fingerprint)."""

    max_text_tokens: int = 600  # gpt.max_text_tokens of the target model
    max_mel_tokens: int = 800  # gpt.max_mel_tokens
    min_seconds: float = 0.5
    trim_silence: bool = False
    trim_db: float = 40.0
    cond_mode: str = "other"  # "other" (a different clip of the same speaker) or "self"
    cond_max_seconds: float | None = 6.0  # crop of the stored reference log-mel
    val_fraction: float = 0.05
    min_tag_count: int = 2  # tags seen this often get at least one validation example
    seed: int = 1234
    shard_size: int = 256

    def __post_init__(self):
        if self.cond_mode not in ("other", "self"):
            raise ValueError(f"cond_mode must be 'other' or 'self', got {self.cond_mode!r}")
        frames = cond_frames(self.cond_max_seconds)
        if frames is not None and not MIN_COND_FRAMES <= frames <= MAX_COND_FRAMES:
            raise ValueError(f"cond_max_seconds {self.cond_max_seconds} gives {frames} frames, "
                             f"outside [{MIN_COND_FRAMES}, {MAX_COND_FRAMES}] the conditioning encoder accepts")
        if not 0 <= self.val_fraction < 1 or self.shard_size <= 0:
            raise ValueError(f"invalid val_fraction / shard_size: {self.val_fraction} / {self.shard_size}")

    @classmethod
    def for_model(cls, gpt_config, **overrides) -> "PrepareSettings":
        """Settings whose limits are a model's ``GPTConfig`` maxima."""
        return cls(max_text_tokens=gpt_config.max_text_tokens, max_mel_tokens=gpt_config.max_mel_tokens, **overrides)

    def decode_settings(self) -> DecodeSettings:
        """The audio half of these settings."""
        return DecodeSettings(trim_silence=self.trim_silence, trim_db=self.trim_db, min_seconds=self.min_seconds,
                              max_codes=self.max_mel_tokens)

    def cond_max_frames(self) -> int | None:
        """Frames kept of each stored log-mel."""
        return cond_frames(self.cond_max_seconds)


def _process_group():
    """(rank, world size, barrier) from accelerate when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def _plan(source: Source, data_dir: Path, settings: PrepareSettings, identities: dict) -> tuple[dict, list[ShardJob]]:
    records = source.records()
    settings_fp = fingerprint([dataclasses.asdict(settings), identities])
    jobs, shard_fps = [], []
    for k in range(math.ceil(len(records) / settings.shard_size)):
        start, stop = k * settings.shard_size, min(len(records), (k + 1) * settings.shard_size)
        keys = [dataclasses.asdict(r) for r in records[start:stop]]
        shard_fps.append(fingerprint(keys))
        jobs.append(ShardJob(k, start, stop, shard_path(data_dir, k), fingerprint([settings_fp, shard_fps[-1]])))
    run = {"source": source.name, "records": len(records), "settings": dataclasses.asdict(settings),
           "encoders": identities, "settings_fingerprint": settings_fp,
           "source_fingerprint": fingerprint(shard_fps), "shard_fingerprints": shard_fps}
    return run, jobs


def explain_mismatch(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two ``prepare.json`` records (empty when they agree)."""
    why = [f"setting {k}: {old['settings'].get(k)!r} -> {v!r}" for k, v in new["settings"].items()
           if old.get("settings", {}).get(k) != v]
    why += [f"{k} encoder: {old.get('encoders', {}).get(k)!r} -> {v!r}" for k, v in new["encoders"].items()
            if old.get("encoders", {}).get(k) != v]
    if old.get("source_fingerprint") != new["source_fingerprint"]:
        a, b = old.get("shard_fingerprints", []), new["shard_fingerprints"]
        changed = [k for k in range(min(len(a), len(b))) if a[k] != b[k]]
        why.append(f"source {old.get('source')!r} ({old.get('records')} records) -> {new['source']!r} "
                   f"({new['records']} records); records differ in shards {changed} of the first {min(len(a), len(b))}")
    return why


def _check_run(data_dir: Path, run: dict, overwrite: bool, is_main: bool) -> None:
    path = data_dir / RUN_FILE
    old = json.loads(path.read_text()) if path.exists() else None
    why = explain_mismatch(old, run) if old else []
    if why and not overwrite:
        raise DataDirMismatch(f"{data_dir} was prepared from other inputs or settings:\n  " + "\n  ".join(why)
                              + "\nUse another directory, or overwrite=True (--overwrite) to rebuild it.")
    if is_main:
        if why:
            shutil.rmtree(data_dir / SHARD_DIR, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(run, indent=1, ensure_ascii=False))


def prepare(source: Source, data_dir: str | Path, clip_encoder: ClipEncoder, text_encoder: TextEncoder,
            settings: PrepareSettings | None = None, *, num_workers: int = 0, base_checkpoint_hash: str | None = None,
            overwrite: bool = False, progress: bool = True,
            manifest_extra: dict | None = None) -> dict | None:
    """Prepare ``source`` into ``data_dir``; returns the manifest (None on non-main processes).

    ``num_workers`` decoding processes (0: decode here). Under ``accelerate launch`` each process handles
    a disjoint set of shards; the main process writes ``manifest.json``, ``examples.jsonl`` and
    ``rejected.jsonl`` once all shards exist. ``manifest_extra`` entries are added to the manifest.
    """
    settings = settings or PrepareSettings()
    data_dir = Path(data_dir)
    rank, world, barrier = _process_group()
    identities = {"clip": clip_encoder.identity, "text": text_encoder.identity}
    run, jobs = _plan(source, data_dir, settings, identities)
    _check_run(data_dir, run, overwrite, rank == 0)
    barrier()
    mine = [j for j in jobs if j.index % world == rank]
    pool = ProcessPoolExecutor(num_workers, mp_context=get_context("spawn")) if num_workers > 0 else None
    bar = tqdm(total=sum(j.stop - j.start for j in mine), unit="clip", desc=f"prepare {rank}/{world}",
               position=rank, disable=not progress, dynamic_ncols=True)
    try:
        for job in mine:
            meta = read_shard_meta(job.path)
            if meta is None or meta.get("fingerprint") != job.fingerprint:
                run_shard(job, source, source.records(), clip_encoder, text_encoder, settings, pool)
            bar.update(job.stop - job.start)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    barrier()
    if rank != 0:
        return None
    return merge(data_dir, jobs, run, settings, base_checkpoint_hash, manifest_extra)
