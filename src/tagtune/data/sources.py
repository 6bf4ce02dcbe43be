"""Corpus sources: what clips exist, their text and speaker, and where their audio lives.

A source lists :class:`Record` s (metadata only, in a fixed order) and fetches audio for a range of them
(``audio(start, stop)`` -> encoded bytes or file paths). Supported layouts:

* parquet / arrow files or folders of them (Elise: ``audio`` = {bytes, path}, ``text``, ``duration``),
* a Hugging Face dataset through ``datasets`` (``kind="hf"``),
* an LJSpeech folder: ``metadata.csv`` with ``id|text`` or ``id|text|normalized``, wavs in ``wavs/`` or beside,
* CSV / TSV / JSONL manifests with ``audio`` (path), ``text``, optional ``speaker``, ``id``, ``events``.

Event boundaries a corpus does not list can come from an *events file* (``tagtune events`` writes one):
``with_events`` lays them onto the clips by ``source_id``.

Audio paths may point anywhere the user can read, also outside the corpus folder: a relative path is
resolved against the folder of the file that names it (the manifest, ``metadata.csv``, the parquet file),
an absolute one is taken as it is. Only audio is decoded from them; a path that is missing, no regular file
(a folder, FIFO or device, also behind a symbolic link) or not audio is rejected with its reason.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tagtune.data.decode import special_kind
from tagtune.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
LJSPEECH_METADATA = "metadata.csv"
FOLDER_MANIFEST = "metadata.jsonl"  # a folder of clips with a JSONL manifest (what `tagtune.synthetic` writes)


class SourceError(UserError, ValueError):
    """A corpus that cannot be opened at all (single bad items are rejections, not errors)."""


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class ColumnMap:
    """Column (or JSON key) names of a corpus; ``id`` None means "number the rows"."""

    audio: str = "audio"
    text: str = "text"
    speaker: str = "speaker"
    duration: str = "duration"
    events: str = "events"
    id: str | None = None

    def metadata_columns(self) -> list[str]:
        """Every column except the audio."""
        return [c for c in (self.text, self.speaker, self.duration, self.events, self.id) if c]


@dataclass
class Record:
    """One clip's metadata. ``text`` stays bytes when it could not be decoded as UTF-8."""

    source_id: str
    text: str | bytes | None
    speaker: str = ""
    events: Any = None
    duration: float | None = None
    audio_key: str = ""  # identifies the audio content for fingerprints (path + size + mtime, or file#row)
    error: str | None = None  # the manifest line itself was unusable


class Source(Protocol):
    name: str

    def records(self) -> list[Record]: ...

    def audio(self, start: int, stop: int) -> list[bytes | str | None]: ...


def file_key(path: Path) -> str:
    """A cheap content identity for a file: its path, size and modification time."""
    try:
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except (OSError, ValueError):  # missing, a name too long, a NUL byte
        return f"{path}:missing"


def _read_text_lines(path: Path) -> list[str]:
    # surrogateescape keeps undecodable bytes visible, so that clip is rejected instead of the whole file
    return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


class PathListSource:
    """Sources whose audio are files on disk (LJSpeech folders and manifests)."""

    name = ""

    def __init__(self, records: list[Record], paths: list[Path | None]):
        self._records, self._paths = records, paths

    def records(self) -> list[Record]:
        """Every clip's metadata, in file order."""
        return self._records

    def audio(self, start: int, stop: int) -> list[str | None]:
        """Audio file paths of clips ``start..stop-1``."""
        return [str(p) if p is not None else None for p in self._paths[start:stop]]


def _ljspeech_wav(root: Path, clip_id: str) -> Path:
    name = clip_id if clip_id.lower().endswith(AUDIO_SUFFIXES) else f"{clip_id}.wav"
    in_wavs = root / "wavs" / name
    return in_wavs if in_wavs.exists() or not (root / name).exists() else root / name


def ljspeech_source(root: Path) -> PathListSource:
    """An LJSpeech-style folder; the normalized third column is used when present and non-empty."""
    records, paths = [], []
    for n, line in enumerate(_read_text_lines(root / LJSPEECH_METADATA)):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            records.append(Record(f"line{n + 1}", None, error=f"metadata.csv line {n + 1}: no '|' separator"))
            paths.append(None)
            continue
        text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
        wav = _ljspeech_wav(root, fields[0].strip())
        records.append(Record(fields[0].strip(), text, audio_key=file_key(wav)))
        paths.append(wav)
    source = PathListSource(records, paths)
    source.name = str(root)
    return source


def _manifest_rows(path: Path) -> list[dict | str]:
    """Rows of a CSV/TSV (header required) or JSONL manifest; a malformed JSON line becomes its error text."""
    lines = _read_text_lines(path)
    if path.suffix == ".jsonl":
        rows: list[dict | str] = []
        for n, line in enumerate(lines):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows.append(row if isinstance(row, dict) else f"line {n + 1}: not a JSON object")
                except json.JSONDecodeError as e:
                    rows.append(f"line {n + 1}: {e}")
        return rows
    if not lines:
        return []
    delimiter = "\t" if path.suffix == ".tsv" else ("|" if "|" in lines[0] and "," not in lines[0] else ",")
    return list(csv.DictReader(lines, delimiter=delimiter))


def _events(value: Any) -> Any:
    """Events pass through; a CSV cell holding JSON is parsed."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            return value
    return value


def manifest_source(path: Path, columns: ColumnMap | None = None) -> PathListSource:
    """A CSV/TSV/JSONL list of clips; relative audio paths are resolved against the manifest's folder."""
    cols = columns or ColumnMap()
    rows = _manifest_rows(path)
    header = list(rows[0]) if rows and path.suffix != ".jsonl" else None
    if header is not None and (missing := [c for c in (cols.audio, cols.text) if c not in header]):
        raise SourceError(f"{path}: no {' and no '.join(repr(c) for c in missing)} column (the header has "
                          f"{', '.join(map(repr, header))}); clips need audio and text columns")
    records, paths = [], []
    for n, row in enumerate(rows):
        if isinstance(row, str) or not isinstance(row.get(cols.audio), str) or not row[cols.audio]:
            error = row if isinstance(row, str) else f"row {n + 1}: no '{cols.audio}' path"
            records.append(Record(f"row{n + 1}", None, error=error))
            paths.append(None)
            continue
        audio = Path(row[cols.audio])
        audio = audio if audio.is_absolute() else path.parent / audio
        rid = str(row.get(cols.id) or row[cols.audio]) if cols.id else str(row[cols.audio])
        records.append(
            Record(rid, row.get(cols.text), str(row.get(cols.speaker) or ""), _events(row.get(cols.events)),
                   audio_key=file_key(audio))
        )
        paths.append(audio)
    source = PathListSource(records, paths)
    source.name = str(path)
    return source


def open_source(spec: str | Path, kind: str = "auto", columns: ColumnMap | None = None,
                hf_split: str = "train", hf_kwargs: dict | None = None) -> Source:
    """Open a corpus. ``kind``: "auto" (by path), "table", "ljspeech", "manifest" or "hf" (dataset name)."""
    from tagtune.data.tables import TABLE_SUFFIXES, HFSource, TableSource

    if kind == "hf":
        return HFSource(str(spec), hf_split, columns, **(hf_kwargs or {}))
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"corpus {spec} not found (for a Hugging Face dataset name pass kind='hf')")
    if (special := special_kind(path)) not in (None, "a folder"):
        raise SourceError(f"corpus {spec} is not a regular file or folder ({special})")
    if path.is_file():
        if path.suffix in TABLE_SUFFIXES and kind in ("auto", "table"):
            return TableSource([path], columns)
        if path.suffix in MANIFEST_SUFFIXES and kind in ("auto", "manifest"):
            return manifest_source(path, columns)
        raise SourceError(f"{path}: unsupported corpus file (expected {TABLE_SUFFIXES + MANIFEST_SUFFIXES})")
    if (path / LJSPEECH_METADATA).is_file() and kind in ("auto", "ljspeech"):
        return ljspeech_source(path)
    tables = sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES)
    if tables and kind in ("auto", "table"):
        return TableSource(tables, columns)
    if (path / FOLDER_MANIFEST).is_file() and kind in ("auto", "manifest"):
        return manifest_source(path / FOLDER_MANIFEST, columns)
    raise SourceError(f"{path}: no {LJSPEECH_METADATA}, no {FOLDER_MANIFEST} and no parquet/arrow files inside")


EVENTS_LINE = '{"id": SOURCE_ID, "events": [{"tag", "start_sample", "end_sample", "sample_rate"}, ...]}'


def _events_problem(row: Any) -> str | None:
    """What is wrong with one line of an events file (None: nothing)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool) or row["id"] == "":
        return 'no "id"'
    if not isinstance(row.get("events"), list) or not row["events"]:
        return 'no "events" list'
    for event in row["events"]:
        if not isinstance(event, dict) or not isinstance(event.get("tag"), str):
            return f"an event without a tag: {json.dumps(event)[:80]}"
        start, end, rate = (event.get(k) for k in ("start_sample", "end_sample", "sample_rate"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, rate)) \
                or not 0 <= start < end or rate <= 0:
            return f"event {json.dumps(event)[:80]} needs whole numbers 0 <= start_sample < end_sample, sample_rate > 0"
    return None


def read_events_file(path: str | Path) -> dict[str, list[dict]]:
    """An events file (JSONL, one line per clip, ``EVENTS_LINE``) -> {source_id: events}; a malformed one is a
    SourceError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"events file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    out: dict[str, list[dict]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"events file {path} line {n}: not JSON ({e.msg}); each line is {EVENTS_LINE}") from None
        if (problem := _events_problem(row)) is not None:
            raise SourceError(f"events file {path} line {n}: {problem}; each line is {EVENTS_LINE}")
        if str(row["id"]) in out:
            raise SourceError(f"events file {path} line {n}: id {row['id']!r} is given twice")
        out[str(row["id"])] = row["events"]
    return out


class EventsOverlay:
    """A source whose clips that list no events take theirs from an events file, by ``source_id``.

    Its name stays the corpus's own: a data folder names the corpus it was prepared from (and reopens it); the
    events enter the records, so they enter the prepared folder's fingerprint.
    """

    def __init__(self, source: Source, events: dict[str, list[dict]]):
        self.source, self.name = source, source.name
        own = source.records()
        takes = [r.source_id in events and not r.events for r in own]
        self._records = [dataclasses.replace(r, events=events[r.source_id]) if take else r
                         for r, take in zip(own, takes)]
        self.overlaid = sum(takes)

    def records(self) -> list[Record]:
        """The corpus's records, with the file's events where they had none."""
        return self._records

    def audio(self, start: int, stop: int) -> list:
        """The corpus's own audio."""
        return self.source.audio(start, stop)


def with_events(source: Source, path: str | Path) -> EventsOverlay:
    """``source`` with the events of the events file ``path`` on its clips that list none (see EventsOverlay).

    Ids of the file that name no clip of the source are left out, with one warning giving their count.
    """
    events = read_events_file(path)
    overlay = EventsOverlay(source, events)
    unmatched = len(events.keys() - {r.source_id for r in overlay.records()})
    if unmatched:
        log.warning("events file %s: %d of its %d ids name no clip of %s (left out)", path, unmatched, len(events),
                    source.name)
    return overlay
