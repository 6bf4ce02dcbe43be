"""Prepared shards: one safetensors file per block of source records, written atomically.

Variable-length arrays are concatenated with offset tables, so a reader memory-maps a shard and slices one
example without loading the rest:

| tensor | shape | dtype | |
|---|---|---|---|
| ``codes`` / ``code_offsets`` | (sum L_c,) / (n+1,) | int16 / int64 | DVAE codes (< 8192 fit int16) |
| ``text_ids`` / ``text_offsets`` | (sum L_t,) / (n+1,) | int32 / int64 | tag-extended tokenizer ids |
| ``mels`` / ``mel_offsets`` | (sum T, n_mels) / (n+1,) | float32 / int64 | log-mel, cropped to the conditioning max |
| ``wav_lens`` | (n,) | int64 | 24 kHz samples of the (trimmed) clip |

An IndexTTS-2 data folder stores semantic codes in ``codes`` and, in place of the log-mels, the clips'
conditioning features: ``features`` / ``feature_offsets``, (sum T, 1024) float16 normalised w2v-BERT states
(50 per second), cropped like the mels.

The JSON metadata ``tagtune`` holds the shard fingerprint, per-example records and the rejections.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tagtune.atomic import FILE_MODE, atomic_write_text  # noqa: F401  (re-exported for the data package)
from tagtune.errors import UserError
from tagtune.folders import SHARDS_DIR as SHARD_DIR

META_KEY = "tagtune"
TEMP_SUFFIX = ".tmp"
OLD_TEMP_PATTERN = ".shard-*.safetensors.tmp*"  # temporary shards of earlier versions: ".NAME.tmpPID"
OFFSETS_OF = {"text_ids": "text_offsets", "codes": "code_offsets", "mels": "mel_offsets", "features": "feature_offsets"}
MELS, FEATURES = "mels", "features"  # the conditioning arrays of 1.x (log-mels) and IndexTTS-2 (w2v-BERT states)
COND_DTYPES = {MELS: torch.float32, FEATURES: torch.float16}


class DataDirError(UserError, OSError):
    """A DATA_DIR that cannot be read or written as one: not a folder, someone else's folder, damaged."""


class ShardError(DataDirError):
    """A shard file that is missing, truncated or not one tagtune wrote."""


def fingerprint(obj: Any) -> str:
    """A stable hash of JSON-able data (settings, record lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return hashlib.sha256(blob).hexdigest()[:16]


def shard_path(data_dir: Path, index: int) -> Path:
    """Where shard ``index`` lives."""
    return data_dir / SHARD_DIR / f"shard-{index:05d}.safetensors"


def _concat(parts: list[torch.Tensor], dtype: torch.dtype,
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [p.shape[0] for p in parts], dtype=torch.int64)
    empty = torch.zeros((0,) if width is None else (0, width), dtype=dtype)
    flat = torch.cat([p.to(dtype) for p in parts]) if parts else empty
    return flat.contiguous(), torch.cumsum(lengths, 0)


def write_shard(path: Path, examples: list[dict], arrays: list[dict[str, torch.Tensor]], meta: dict,
                n_mels: int, cond: str = MELS) -> None:
    """Write one shard atomically (temporary file + fsync + ``os.replace``): a kill leaves none or all of it.

    ``arrays[i]`` holds ``text_ids`` (L_t,), ``codes`` (L_c,), ``mel`` (n_mels, T) and ``wav_len`` of
    ``examples[i]``; ``mel`` is stored as ``cond`` (MELS, or FEATURES with ``n_mels`` = the feature width).
    """
    tensors = {}
    tensors["text_ids"], tensors["text_offsets"] = _concat([a["text_ids"] for a in arrays], torch.int32)
    tensors["codes"], tensors["code_offsets"] = _concat([a["codes"] for a in arrays], torch.int16)
    tensors[cond], tensors[OFFSETS_OF[cond]] = _concat([a["mel"].T for a in arrays], COND_DTYPES[cond], n_mels)
    tensors["wav_lens"] = torch.tensor([int(a["wav_len"]) for a in arrays], dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")  # what ``atomic.sweep_temp_files`` removes
    try:
        header = json.dumps({**meta, "examples": examples}, ensure_ascii=False)
        save_file(tensors, str(tmp), metadata={META_KEY: header})
        os.chmod(tmp, FILE_MODE)  # the mode of every other file tagtune writes, not save_file's own
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_shard_meta(path: Path) -> dict | None:
    """The shard's JSON metadata, or None when the file is absent or unreadable."""
    try:
        return shard_meta(path)
    except ShardError:  # a foreign or damaged file is simply redone
        return None


def shard_meta(path: Path) -> dict:
    """The shard's JSON metadata (with ``rows``, the number of examples its tensors hold); raises ShardError."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
            rows = f.get_slice("wav_lens").get_shape()[0]
    except FileNotFoundError:
        raise ShardError(f"{path}: missing") from None
    except Exception as e:  # safetensors, JSON and key errors of a damaged or foreign file
        raise ShardError(f"{path}: damaged or not a tagtune shard ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(meta, dict) or len(meta.get("examples", ())) != rows:
        raise ShardError(f"{path}: damaged (its metadata does not match its {rows} rows)")
    return {**meta, "rows": rows}


class ShardReader:
    """Memory-mapped access to one shard's examples; reopens itself in a forked DataLoader worker."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None
        self._pid = None
        self._offsets: dict[str, torch.Tensor] = {}

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = safe_open(str(self.path), "pt"), os.getpid()
            present = set(self._handle.keys())
            self._offsets = {k: self._handle.get_tensor(k) for k in OFFSETS_OF.values() if k in present}
            self._offsets["wav_lens"] = self._handle.get_tensor("wav_lens")
        return self._handle

    def _slice(self, name: str, row: int) -> torch.Tensor:
        f = self._file()
        offsets = self._offsets[OFFSETS_OF[name]]
        return f.get_slice(name)[int(offsets[row]) : int(offsets[row + 1])]

    def text_ids(self, row: int) -> torch.Tensor:
        """(L_t,) int64 token ids."""
        return self._slice("text_ids", row).long()

    def codes(self, row: int) -> torch.Tensor:
        """(L_c,) int64 DVAE codes."""
        return self._slice("codes", row).long()

    def mel(self, row: int) -> torch.Tensor:
        """(n_mels, T) float32 log-mel (cropped)."""
        return self._slice("mels", row).T.contiguous()

    def features(self, row: int) -> torch.Tensor:
        """(1024, T) float32 normalised w2v-BERT states of an IndexTTS-2 shard (cropped)."""
        return self._slice(FEATURES, row).float().T.contiguous()

    def wav_len(self, row: int) -> int:
        """Number of 24 kHz samples of the clip."""
        self._file()
        return int(self._offsets["wav_lens"][row])
