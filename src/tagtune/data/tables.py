"""Columnar corpora: parquet / arrow files (the Elise layout) and Hugging Face ``datasets``.

Only the small columns (text, speaker, duration, ...) are read up front; audio bytes are fetched per
shard, one row group (parquet) or zero-copy slice (arrow, HF) at a time, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tagtune.data.decode import UNDECODABLE_AUDIO, EncodedAudio, Rejection
from tagtune.data.sources import ColumnMap, Record, SourceError, file_key

TABLE_SUFFIXES = (".parquet", ".arrow")
TABLE_ERRORS = (pa.ArrowException, OSError)  # what pyarrow raises for a damaged or foreign file


def _audio_value(cell: Any, base: Path | None) -> bytes | EncodedAudio | str | None:
    """An audio cell -> encoded bytes (named by the cell's path when it has one), or a path.

    Elise stores ``{"bytes": ..., "path": ...}``.
    """
    if isinstance(cell, dict):
        if cell.get("bytes"):
            name = cell.get("path")
            return EncodedAudio(bytes(cell["bytes"]), name) if isinstance(name, str) and name else cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        path = Path(cell)
        return str(base / path) if base is not None and not path.is_absolute() else cell
    return None


def _records_from_columns(cols: dict[str, list], columns: ColumnMap, prefix: str, key: str) -> list[Record]:
    """Build records from python column lists (text may be bytes when the column is binary)."""
    n = len(cols[columns.text]) if columns.text in cols else 0
    out = []
    for i in range(n):
        rid = cols[columns.id][i] if columns.id in cols else f"{prefix}{i}"
        out.append(
            Record(
                source_id=str(rid),
                text=cols[columns.text][i],
                speaker=str(cols[columns.speaker][i] or "") if columns.speaker in cols else "",
                events=cols[columns.events][i] if columns.events in cols else None,
                duration=cols[columns.duration][i] if columns.duration in cols else None,
                audio_key=f"{key}#{i}",
            )
        )
    return out


def _open_arrow(path: Path) -> pa.Table:
    """Memory-map an arrow file in either IPC flavour (``datasets`` writes the stream format)."""
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


@dataclass
class _TableFile:
    path: Path
    rows: int
    offset: int  # index of this file's first row in the whole source


class TableSource:
    """Parquet / arrow files read in order; each row is one clip."""

    def __init__(self, files: list[Path], columns: ColumnMap | None = None):
        self.columns = columns or ColumnMap()
        self.files: list[_TableFile] = []
        self._records: list[Record] = []
        self._cache: tuple[Path, int, pa.Table] | None = None  # last parquet row group read
        self._arrow: tuple[Path, pa.Table] | None = None
        for path in files:
            recs = self._read_small_columns(path)
            self.files.append(_TableFile(path, len(recs), len(self._records)))
            self._records.extend(recs)
        self.name = ",".join(str(f) for f in files)

    def _read_small_columns(self, path: Path) -> list[Record]:
        kind = "parquet" if path.suffix == ".parquet" else "arrow"
        try:
            schema = pq.read_schema(path) if kind == "parquet" else _open_arrow(path).schema
        except TABLE_ERRORS as e:
            raise SourceError(f"{path}: not a readable {kind} file ({_one_line(e)})") from None
        missing = [c for c in (self.columns.audio, self.columns.text) if c not in schema.names]
        if missing:
            raise SourceError(f"{path}: no {' and no '.join(repr(c) for c in missing)} column (it has "
                              f"{', '.join(map(repr, schema.names)) or 'none'}); clips need audio and text columns")
        wanted = [c for c in self.columns.metadata_columns() if c in schema.names]
        try:
            table = pq.read_table(path, columns=wanted) if kind == "parquet" else _open_arrow(path).select(wanted)
        except TABLE_ERRORS as e:
            raise SourceError(f"{path}: damaged {kind} file ({_one_line(e)})") from None
        return _records_from_columns(table.to_pydict(), self.columns, f"{path.stem}:", file_key(path))

    def records(self) -> list[Record]:
        """Every row's metadata, in file order."""
        return self._records

    def audio(self, start: int, stop: int) -> list[bytes | str | None]:
        """Audio bytes (or paths) of rows ``start..stop-1``."""
        return [self._audio_row(i) for i in range(start, stop)]

    def _audio_row(self, index: int) -> bytes | EncodedAudio | str | Rejection | None:
        file = next(f for f in self.files if f.offset <= index < f.offset + f.rows)
        row = index - file.offset
        try:
            if file.path.suffix == ".arrow":
                if self._arrow is None or self._arrow[0] != file.path:
                    self._arrow = (file.path, _open_arrow(file.path))  # zero-copy, memory-mapped
                cell = self._arrow[1].column(self.columns.audio)[row].as_py()
            else:
                cell = self._parquet_cell(file.path, row)
        except TABLE_ERRORS as e:  # one damaged row group costs its rows, not the run
            return Rejection(UNDECODABLE_AUDIO, f"{file.path.name} row {row}: unreadable ({_one_line(e)})")
        return _audio_value(cell, file.path.parent)

    def _parquet_cell(self, path: Path, row: int) -> Any:
        reader = pq.ParquetFile(path)
        first = 0
        for group in range(reader.num_row_groups):
            n = reader.metadata.row_group(group).num_rows
            if row < first + n:
                break
            first += n
        if self._cache is None or self._cache[:2] != (path, group):
            self._cache = (path, group, reader.read_row_group(group, columns=[self.columns.audio]))
        return self._cache[2].column(self.columns.audio)[row - first].as_py()


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


class HFSource:
    """A Hugging Face dataset split loaded with ``datasets`` (audio kept undecoded)."""

    def __init__(self, name: str, split: str = "train", columns: ColumnMap | None = None, **load_kwargs):
        import datasets  # optional extra: tagtune[hf]

        self.columns = columns or ColumnMap()
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
        if isinstance(ds.features.get(self.columns.audio), datasets.Audio):
            # decoding needs torchcodec; we decode the bytes ourselves with soundfile
            ds = ds.cast_column(self.columns.audio, datasets.Audio(decode=False))
        self.dataset = ds
        self.name = f"hf:{name}:{split}"
        small = [c for c in self.columns.metadata_columns() if c in ds.column_names]
        cols = ds.select_columns(small).to_dict()
        key = f"{self.name}@{ds._fingerprint}"
        self._records = _records_from_columns(cols, self.columns, f"{split}:", key)

    def records(self) -> list[Record]:
        """Every row's metadata, in dataset order."""
        return self._records

    def audio(self, start: int, stop: int) -> list[bytes | str | None]:
        """Audio bytes (or paths) of rows ``start..stop-1``."""
        cells = self.dataset[start:stop][self.columns.audio]
        return [_audio_value(c, None) for c in cells]
