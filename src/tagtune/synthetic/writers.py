"""Corpus layouts on disk, and reading event segments back from them.

- "jsonl": ``wavs/NNNNN.wav`` (mono 16-bit) plus ``metadata.jsonl``, one object per clip:
  ``audio`` (path relative to the folder), ``text``, ``speaker``, ``language``, ``events``
  (``[{tag, start_sample, end_sample}]``, end exclusive), ``duration`` (s), ``sample_rate``.
- "parquet": the Elise layout, ``data/train-00000-of-00001.parquet`` with ``audio`` as a
  struct ``{bytes, path}`` of encoded wav files and ``text``; ``speaker``, ``duration`` and
  ``events`` ride along as extra columns.

Both get a ``corpus.json`` with the settings, seed and counts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

MANIFEST = "metadata.jsonl"
WAV_DIR = "wavs"
PARQUET_FILE = "data/train-00000-of-00001.parquet"
CORPUS_JSON = "corpus.json"
FORMATS = ("jsonl", "parquet")


def encode_wav(audio: np.ndarray, sr: int) -> bytes:
    """int16 mono samples -> wav file bytes."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


class JsonlWriter:
    """Writes wav files and the JSONL manifest, one clip at a time, in clip order."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        (out_dir / WAV_DIR).mkdir(parents=True, exist_ok=True)
        self.manifest_path = out_dir / MANIFEST
        self._manifest = self.manifest_path.open("w", encoding="utf-8")

    def add(self, record: dict, wav: bytes) -> None:
        """Store one clip; ``record["audio"]`` is its relative file name."""
        (self.out_dir / record["audio"]).write_bytes(wav)
        self._manifest.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._manifest.close()


class ParquetWriter:
    """Writes the Elise parquet layout in row groups of ``rows_per_group`` clips."""

    def __init__(self, out_dir: Path, rows_per_group: int = 256):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.manifest_path = out_dir / PARQUET_FILE
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        event = pa.struct([("tag", pa.string()), ("start_sample", pa.int64()), ("end_sample", pa.int64())])
        self._schema = pa.schema([
            ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("text", pa.string()), ("speaker", pa.string()), ("duration", pa.float64()),
            ("events", pa.list_(event)),
        ])
        self._writer = pq.ParquetWriter(self.manifest_path, self._schema)
        self._rows: list[dict] = []
        self._rows_per_group = rows_per_group

    def add(self, record: dict, wav: bytes) -> None:
        """Queue one clip; a full row group is flushed to the file."""
        self._rows.append({
            "audio": {"bytes": wav, "path": Path(record["audio"]).name},
            "text": record["text"], "speaker": record["speaker"],
            "duration": record["duration"], "events": record["events"],
        })
        if len(self._rows) >= self._rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(fmt: str, out_dir: Path):
    """The writer for ``fmt`` ("jsonl" or "parquet")."""
    if fmt == "jsonl":
        return JsonlWriter(out_dir)
    if fmt == "parquet":
        return ParquetWriter(out_dir)
    raise ValueError(f"unknown corpus format {fmt!r}; choose one of {FORMATS}")


@dataclass
class EventSegment:
    """One non-verbal event cut out of its clip."""

    tag: str
    audio: np.ndarray  # (T,) float32 mono
    sample_rate: int
    clip: str  # the clip's audio path
    start_sample: int  # where the cut begins in the clip (event start minus padding)
    end_sample: int


def _clips(corpus_dir: Path) -> Iterator[tuple[str, bytes, list[dict]]]:
    """(audio path, wav bytes, events) for each clip of either layout."""
    if (corpus_dir / MANIFEST).exists():
        with (corpus_dir / MANIFEST).open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                yield record["audio"], (corpus_dir / record["audio"]).read_bytes(), record["events"]
        return
    import pyarrow.parquet as pq

    table = pq.read_table(corpus_dir / PARQUET_FILE, columns=["audio", "events"])
    for row in table.to_pylist():
        yield row["audio"]["path"], row["audio"]["bytes"], row["events"]


def event_segments(corpus_dir: str | Path, pad_s: float = 0.0) -> Iterator[EventSegment]:
    """Yield every event of a generated corpus as its own audio segment.

    ``pad_s`` seconds of context are kept on each side (clamped to the clip), which a frame
    level event detector can use as negatives around the onset and offset.
    """
    for path, wav, events in _clips(Path(corpus_dir)):
        audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
        pad = int(pad_s * sr)
        for event in events:
            start = max(0, event["start_sample"] - pad)
            end = min(len(audio), event["end_sample"] + pad)
            yield EventSegment(event["tag"], audio[start:end], sr, path, start, end)
