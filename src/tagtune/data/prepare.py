"""``tagtune prepare``: a corpus -> DATA_DIR of memory-mappable shards, a manifest and the rejections.

Resumable: each shard file carries a fingerprint of its records and of the settings; finished shards are
reused, and temporary files of a killed run are swept. ``prepare.json`` records what the directory was built
from, so a later run with other inputs or settings stops with an explanation instead of mixing two datasets;
every check runs before the first byte is written. Under ``accelerate launch`` every process takes every
world_size-th shard and the main process merges.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from tagtune.atomic import atomic_write_bytes, check_writable, sweep_temp_files
from tagtune.data.decode import DecodeSettings, SettingsError
from tagtune.data.encode import ClipEncoder, TextEncoder
from tagtune.data.merge import merge
from tagtune.data.pipeline import ShardJob, cond_frames, run_shard
from tagtune.data.shards import OLD_TEMP_PATTERN, SHARD_DIR, DataDirError, fingerprint, read_shard_meta, shard_path
from tagtune.data.sources import Source, SourceError
from tagtune.data.split import EMOTION_MODES
from tagtune.errors import UserError
from tagtune.folders import EXAMPLES_FILE, MANIFEST_FILE, REJECTED_FILE, SHARDS_DIR, TAGS_FILE, TOKENIZER_FILE

RUN_FILE = "prepare.json"
MAX_COND_FRAMES = 9999  # the conformer's 5000 sinusoid positions after 2x subsampling
MIN_COND_FRAMES = 3  # Conv2dSubsampling2 needs a 3-frame kernel
INDEX_FILES = (MANIFEST_FILE, EXAMPLES_FILE, REJECTED_FILE)  # the manifest first: it marks a finished folder
OWN_NAMES = {RUN_FILE, *INDEX_FILES, SHARDS_DIR, TOKENIZER_FILE, TAGS_FILE}  # what a data folder may hold
REBUILD_HINT = "use another folder, or overwrite=True to rebuild it"


class DataDirMismatch(UserError, RuntimeError):
    """DATA_DIR was prepared from other inputs or settings (``reasons`` lists the differences)."""

    def __init__(self, data_dir: Path, reasons: list[str], hint: str = REBUILD_HINT):
        self.data_dir, self.reasons = data_dir, reasons
        super().__init__(f"{data_dir} was prepared from other inputs or settings ({'; '.join(reasons)}); {hint}")


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
            raise SettingsError(f"cond_mode must be 'other' or 'self', got {self.cond_mode!r}")
        if self.cond_max_seconds is not None and not (isinstance(self.cond_max_seconds, (int, float))
                                                      and math.isfinite(self.cond_max_seconds)):
            raise SettingsError(f"cond_max_seconds must be a finite number of seconds, got {self.cond_max_seconds!r}")
        frames = cond_frames(self.cond_max_seconds)
        if frames is not None and not MIN_COND_FRAMES <= frames <= MAX_COND_FRAMES:
            raise SettingsError(f"cond_max_seconds {self.cond_max_seconds} gives {frames} frames, "
                                f"outside [{MIN_COND_FRAMES}, {MAX_COND_FRAMES}] the conditioning encoder accepts")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise SettingsError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("shard_size", "max_text_tokens", "max_mel_tokens"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise SettingsError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.decode_settings()  # checks the audio half

    @classmethod
    def for_model(cls, gpt_config, **overrides) -> PrepareSettings:
        """Settings whose limits are a model's ``GPTConfig`` maxima."""
        return cls(max_text_tokens=gpt_config.max_text_tokens, max_mel_tokens=gpt_config.max_mel_tokens, **overrides)

    def decode_settings(self) -> DecodeSettings:
        """The audio half of these settings."""
        return DecodeSettings(trim_silence=self.trim_silence, trim_db=self.trim_db, min_seconds=self.min_seconds,
                              max_codes=self.max_mel_tokens)

    def cond_max_frames(self) -> int | None:
        """Frames kept of each stored log-mel."""
        return cond_frames(self.cond_max_seconds)


@dataclass(frozen=True)
class PrepareSettingsV2(PrepareSettings):
    """Settings of IndexTTS-2 data: those of 1.x (``cond_max_seconds`` crops the speaker features, 50 rows per
    second) plus ``emotion``, how each clip's emotion input is chosen (``data.split.assign_emotions``)."""

    emotion: str = "prompt"

    def __post_init__(self):
        super().__post_init__()
        if self.emotion not in EMOTION_MODES:
            raise SettingsError(f"emotion must be one of {EMOTION_MODES}, got {self.emotion!r}")


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
    def part(key: str) -> dict:
        return old.get(key) if isinstance(old.get(key), dict) else {}

    why = [f"setting {k}: {part('settings').get(k)!r} -> {v!r}" for k, v in new["settings"].items()
           if part("settings").get(k) != v]
    why += [f"{k} encoder: {part('encoders').get(k)!r} -> {v!r}" for k, v in new["encoders"].items()
            if part("encoders").get(k) != v]
    if old.get("source_fingerprint") != new["source_fingerprint"]:
        a, b = old.get("shard_fingerprints") or [], new["shard_fingerprints"]
        changed = [k for k in range(min(len(a), len(b))) if a[k] != b[k]]
        why.append(f"source {old.get('source')!r} ({old.get('records')} records) -> {new['source']!r} "
                   f"({new['records']} records); records differ in shards {changed} of the first {min(len(a), len(b))}")
    return why


def check_data_dir(data_dir: Path) -> None:
    """Refuse a DATA_DIR that is a file, or a folder holding what no ``prepare`` writes (a model folder).

    Writing there would overwrite files that are not ours (a model's ``bpe.model`` and ``tags.json``).
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"{data_dir} exists and is not a folder")
    check_writable(data_dir, folder=True)  # a read-only place fails now, not after the corpus is decoded
    if not data_dir.is_dir() or (data_dir / RUN_FILE).is_file():
        return
    foreign = sorted(p.name for p in data_dir.iterdir()
                     if p.name not in OWN_NAMES and not fnmatch.fnmatch(p.name, ".*.tmp"))
    if foreign:
        listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataDirError(f"{data_dir} is not a data folder of prepare (it holds {listed}); "
                           "choose a new or empty folder")


def _differences(data_dir: Path, run: dict, files: dict[str, bytes]) -> list[str]:
    """Why ``data_dir`` does not belong to this run (empty when it does, or holds nothing of ours yet)."""
    why = [f"its {name} differs from this run's" for name, data in files.items()
           if (data_dir / name).is_file() and (data_dir / name).read_bytes() != data]
    path = data_dir / RUN_FILE
    if not path.is_file():
        return why
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{RUN_FILE} is unreadable ({type(e).__name__})", *why]
    return (explain_mismatch(old, run) if isinstance(old, dict) else [f"{RUN_FILE} is not a JSON object"]) + why


def _check_run(data_dir: Path, run: dict, files: dict[str, bytes], overwrite: bool, is_main: bool) -> None:
    """Refuse a DATA_DIR of other inputs (unless ``overwrite``), then, on the main process, claim it.

    Nothing in DATA_DIR changes before every check has passed.
    """
    check_data_dir(data_dir)
    why = _differences(data_dir, run, files)
    if why and not overwrite:
        raise DataDirMismatch(data_dir, why)
    if not is_main:
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataDirError(f"cannot create {data_dir}: {e.strerror or e}") from None
    sweep_temp_files(data_dir)  # left by a killed run (every process waits for this before it writes)
    sweep_temp_files(data_dir / SHARD_DIR, OLD_TEMP_PATTERN)
    if why:  # overwrite: the old folder stops looking finished before any of it goes
        for name in INDEX_FILES:
            (data_dir / name).unlink(missing_ok=True)
        shutil.rmtree(data_dir / SHARD_DIR, ignore_errors=True)
    for name, data in {RUN_FILE: json.dumps(run, indent=1, ensure_ascii=False).encode("utf-8"), **files}.items():
        if not (data_dir / name).is_file() or (data_dir / name).read_bytes() != data:  # a resume rewrites nothing
            atomic_write_bytes(data_dir / name, data)


def prepare(source: Source, data_dir: str | Path, clip_encoder: ClipEncoder, text_encoder: TextEncoder,
            settings: PrepareSettings | None = None, *, num_workers: int = 0, base_checkpoint_hash: str | None = None,
            overwrite: bool = False, progress: bool = True, manifest_extra: dict | None = None,
            files: dict[str, bytes] | None = None) -> dict | None:
    """Prepare ``source`` into ``data_dir``; returns the manifest (None on non-main processes).

    ``num_workers`` decoding processes (0: decode here). Under ``accelerate launch`` each process handles
    a disjoint set of shards; the main process writes ``manifest.json``, ``examples.jsonl`` and
    ``rejected.jsonl`` once all shards exist. ``manifest_extra`` entries are added to the manifest.
    ``files`` (name -> bytes, e.g. the tokenizer and tags file) are written into ``data_dir`` once it is
    known to be this run's: a ``data_dir`` prepared from other inputs, one holding other versions of these
    files, or a non-empty folder no ``prepare`` made is refused (``DataDirMismatch`` / ``DataDirError``)
    before anything in it changes. ``overwrite=True`` rebuilds a data folder of other inputs.

    Bad clips never stop the run: each is listed in ``rejected.jsonl`` with its reason, exact duplicates
    (the same audio bytes and text as an earlier clip) included; ids naming clips of different content are
    kept and reported (``conflicting_ids`` in the manifest, and a warning).
    """
    settings = settings or PrepareSettings()
    data_dir = Path(data_dir)
    rank, world, barrier = _process_group()
    identities = {"clip": clip_encoder.identity, "text": text_encoder.identity}
    run, jobs = _plan(source, data_dir, settings, identities)
    if not jobs:
        raise SourceError(f"corpus {source.name} lists no clips")
    _check_run(data_dir, run, files or {}, overwrite, rank == 0)
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
