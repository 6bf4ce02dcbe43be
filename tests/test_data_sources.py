"""Every corpus layout lists the same clips with the right text, speaker and decodable audio."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tagtune.data.decode import DecodeSettings, decode_clip
from tagtune.data.sources import ColumnMap, SourceError, open_source
from test_data_support import CLIPS, good_manifest_rows, write_ljspeech, write_manifest, write_parquet

TEXTS = [c[1] for c in CLIPS]
SAMPLES_24K = [round(c[3] * 24000) for c in CLIPS]


def _decoded_lengths(source) -> list[int]:
    return [len(decode_clip(b, DecodeSettings())) for b in source.audio(0, len(source.records()))]


def test_parquet_elise_layout(tmp_path):
    src = open_source(write_parquet(tmp_path / "elise.parquet"))
    recs = src.records()
    assert [r.text for r in recs] == TEXTS
    assert [r.source_id for r in recs] == [f"elise:{i}" for i in range(6)]
    assert [r.duration for r in recs] == [c[3] for c in CLIPS]
    assert _decoded_lengths(src) == SAMPLES_24K  # row groups of 2 read across shard boundaries


def test_parquet_folder_and_custom_columns(tmp_path):
    write_parquet(tmp_path / "d" / "part-0.parquet", CLIPS[:3], with_speaker=True)
    write_parquet(tmp_path / "d" / "part-1.parquet", CLIPS[3:], with_speaker=True)
    src = open_source(tmp_path / "d")
    assert [r.speaker for r in src.records()] == [c[2] for c in CLIPS]
    assert [r.source_id for r in src.records()][2:4] == ["part-0:2", "part-1:0"]
    assert _decoded_lengths(src) == SAMPLES_24K
    renamed = pq.read_table(tmp_path / "d" / "part-0.parquet").rename_columns(["wav", "sentence", "duration", "spk"])
    pq.write_table(renamed, tmp_path / "renamed.parquet")
    src = open_source(tmp_path / "renamed.parquet", columns=ColumnMap(audio="wav", text="sentence", speaker="spk"))
    assert [(r.text, r.speaker) for r in src.records()] == [(c[1], c[2]) for c in CLIPS[:3]]


def test_arrow_stream_file(tmp_path):
    table = pq.read_table(write_parquet(tmp_path / "x.parquet"))
    with pa.OSFile(str(tmp_path / "data.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    src = open_source(tmp_path / "data.arrow")
    assert [r.text for r in src.records()] == TEXTS
    assert _decoded_lengths(src) == SAMPLES_24K


def test_hf_datasets_local_parquet(tmp_path):
    pytest.importorskip("datasets")
    path = write_parquet(tmp_path / "hf.parquet")
    src = open_source("parquet", kind="hf", hf_kwargs={"data_files": str(path), "cache_dir": str(tmp_path / "cache")})
    assert [r.text for r in src.records()] == TEXTS
    assert [r.source_id for r in src.records()][:2] == ["train:0", "train:1"]
    assert _decoded_lengths(src) == SAMPLES_24K


@pytest.mark.parametrize("normalized,beside", [(True, False), (False, True)])
def test_ljspeech_folder(tmp_path, normalized, beside):
    src = open_source(write_ljspeech(tmp_path / "lj", normalized=normalized, beside=beside))
    assert [r.source_id for r in src.records()] == [c[0] for c in CLIPS]
    assert [r.text for r in src.records()] == TEXTS  # the normalized column wins over "raw ..."
    assert _decoded_lengths(src) == SAMPLES_24K


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifests_with_speaker_and_events(tmp_path, suffix):
    rows = good_manifest_rows(tmp_path)
    for n, r in enumerate(rows):
        r["events"] = json.dumps([{"t": 0.1 * n, "tag": "<laughs>"}]) if suffix == ".csv" else [{"t": 0.1 * n}]
    if suffix == ".csv":
        for r in rows:
            r["text"] = r["text"].replace(",", "")
            r["events"] = r["events"].replace(",", ";")  # keep the toy CSV writer unquoted: not JSON any more
    src = open_source(write_manifest(tmp_path / f"list{suffix}", rows))
    recs = src.records()
    assert [r.speaker for r in recs] == [c[2] for c in CLIPS]
    assert [r.source_id for r in recs] == [f"audio/{c[0]}.wav" for c in CLIPS]
    assert recs[2].events == ([{"t": 0.2}] if suffix == ".jsonl" else rows[2]["events"])
    assert _decoded_lengths(src) == SAMPLES_24K


def test_unknown_layout_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metadata.csv, no metadata.jsonl and no parquet"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="kind=.hf."):
        open_source(tmp_path / "nope")
