"""Synthetic corpus: determinism, manifest/event consistency, layouts, engines, errors."""

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tagtune.synthetic import VOICES, engine_available, event_segments, generate_corpus
from tagtune.synthetic.babble import babble
from tagtune.synthetic.engines import split_at_breaks
from tagtune.synthetic.voices import resolve_engine

SR = 24_000
TAG_RE = re.compile(r"<([a-z]+)>")


def tree_digest(root: Path) -> dict:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def read_manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def builtin_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    info = generate_corpus(out, n_clips=12, seed=5, engine="builtin", untagged_fraction=0.25, workers=1)
    return out, info


def test_same_seed_gives_identical_bytes(builtin_corpus, tmp_path):
    out, _ = builtin_corpus
    generate_corpus(tmp_path / "again", n_clips=12, seed=5, engine="builtin", untagged_fraction=0.25, workers=1)
    assert tree_digest(tmp_path / "again") == tree_digest(out)
    generate_corpus(tmp_path / "other", n_clips=12, seed=6, engine="builtin", untagged_fraction=0.25, workers=1)
    assert tree_digest(tmp_path / "other")["metadata.jsonl"] != tree_digest(out)["metadata.jsonl"]


def test_manifest_events_match_text_and_audio(builtin_corpus):
    out, info = builtin_corpus
    records = read_manifest(out)
    assert len(records) == 12 and info.n_clips == 12
    assert sum(not r["events"] for r in records) == 3  # exactly round(12 * 0.25) untagged
    for record in records:
        audio, sr = sf.read(out / record["audio"], dtype="int16")
        assert sr == SR and audio.ndim == 1 and sf.info(out / record["audio"]).subtype == "PCM_16"
        assert record["duration"] == pytest.approx(len(audio) / SR, abs=1e-4)
        assert [e["tag"] for e in record["events"]] == TAG_RE.findall(record["text"])
        assert len(record["events"]) <= 2
        previous_end = 0
        for event in record["events"]:
            assert previous_end < event["start_sample"] < event["end_sample"] < len(audio)
            previous_end = event["end_sample"]


def test_event_spans_start_at_an_onset_after_a_pause(builtin_corpus):
    out, _ = builtin_corpus
    checked = 0
    for record in read_manifest(out):
        audio, _ = sf.read(out / record["audio"], dtype="float32")
        for event in record["events"]:
            start, end = event["start_sample"], event["end_sample"]
            before = audio[start - int(0.04 * SR) : start]  # the gap laid before every event
            first = audio[start : start + int(0.03 * SR)]
            body = audio[start:end]
            assert np.sqrt(np.mean(before**2)) < 0.01 * np.sqrt(np.mean(body**2)) + 1e-3
            assert np.sqrt(np.mean(first**2)) > 0.2 * np.sqrt(np.mean(body**2))
            checked += 1
    assert checked >= 9


def test_corpus_json_counts_match_manifest(builtin_corpus):
    out, info = builtin_corpus
    described = json.loads((out / "corpus.json").read_text())
    records = read_manifest(out)
    tags = [e["tag"] for r in records for e in r["events"]]
    assert described["tag_counts"] == {t: tags.count(t) for t in sorted(set(tags))} == info.tag_counts
    assert described["n_tagged"] == 9 and described["seed"] == 5 and described["engine"] == "builtin"
    assert set(described["speaker_counts"]) <= {n for n in VOICES if n.startswith("builtin-")}
    assert described["total_seconds"] == pytest.approx(sum(r["duration"] for r in records), abs=1e-2)


def test_event_segments_cut_every_event(builtin_corpus):
    out, _ = builtin_corpus
    records = read_manifest(out)
    segments = list(event_segments(out))
    expected = [(r["audio"], e) for r in records for e in r["events"]]
    assert len(segments) == len(expected)
    for segment, (path, event) in zip(segments, expected):
        assert segment.clip == path and segment.tag == event["tag"] and segment.sample_rate == SR
        assert len(segment.audio) == event["end_sample"] - event["start_sample"]
    padded = next(iter(event_segments(out, pad_s=0.01)))
    assert len(padded.audio) == len(segments[0].audio) + 2 * int(0.01 * SR)


def test_parquet_layout_reads_back_with_pyarrow_and_soundfile(builtin_corpus, tmp_path):
    import pyarrow.parquet as pq

    out, _ = builtin_corpus
    info = generate_corpus(tmp_path, n_clips=12, seed=5, engine="builtin", untagged_fraction=0.25, fmt="parquet",
                           workers=1)
    table = pq.read_table(tmp_path / info.manifest)
    assert {"audio", "text"} <= set(table.column_names)
    assert table.schema.field("audio").type.names == ["bytes", "path"]
    rows, records = table.to_pylist(), read_manifest(out)
    assert [r["text"] for r in rows] == [r["text"] for r in records]
    audio, sr = sf.read(io.BytesIO(rows[1]["audio"]["bytes"]), dtype="int16")
    reference, _ = sf.read(out / records[1]["audio"], dtype="int16")
    assert sr == SR and np.array_equal(audio, reference)
    assert len(list(event_segments(tmp_path))) == sum(len(r["events"]) for r in records)


def test_babble_is_deterministic_and_driven_by_the_text():
    voice = VOICES["builtin-f1"]
    short = babble("Oh wow.", voice, SR)
    assert np.array_equal(short, babble("Oh wow.", voice, SR))
    longer = babble("Oh wow, that was a very long and winding sentence.", voice, SR)
    assert len(longer) > 3 * len(short)
    a, b = babble("Oh cat", voice, SR), babble("Oh dog", voice, SR)
    m = min(len(a), len(b))
    assert np.mean(np.abs(a[:m] - b[:m])) > 0.3 * np.mean(np.abs(a[:m]))
    male = babble("Oh wow.", VOICES["builtin-m1"], SR)
    assert not np.array_equal(male, short)


def test_split_at_breaks_finds_texts_and_ignores_clicks():
    sr = 22_050
    rng = np.random.default_rng(0)
    loud = lambda s: (rng.uniform(-8000, 8000, int(s * sr))).astype(np.int16)  # noqa: E731
    quiet = lambda s: np.zeros(int(s * sr), np.int16)  # noqa: E731
    click = loud(0.03)
    audio = np.concatenate([loud(0.5), quiet(0.3), loud(0.4), quiet(0.7), click, quiet(0.8), loud(0.6), quiet(1.5)])
    spans = split_at_breaks(audio, sr, 2)
    assert spans is not None and len(spans) == 2
    assert spans[0][0] == 0 and abs(spans[0][1] / sr - 1.2) < 0.011
    assert abs(spans[1][0] / sr - (1.2 + 1.53)) < 0.011
    assert split_at_breaks(audio, sr, 3) is None


def test_chinese_clips_with_builtin_engine(tmp_path):
    info = generate_corpus(tmp_path, n_clips=4, seed=1, engine="builtin", chinese_fraction=1.0,
                           untagged_fraction=0.0, workers=1)
    records = read_manifest(tmp_path)
    assert info.language_counts == {"zh": 4}
    assert all(re.search(r"[\u4e00-\u9fff]", r["text"]) and r["events"] for r in records)


def test_auto_engine_falls_back_to_builtin(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert resolve_engine("auto") == "builtin"
    with pytest.raises(RuntimeError, match="espeak-ng"):
        resolve_engine("espeak")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tags": ("coughs",)}, "unknown: \\['coughs'\\]"),
        ({"voices": ["espeak-us-f3"]}, "do not belong to engine 'builtin'"),
        ({"voices": ["nobody"]}, "unknown voices"),
        ({"fmt": "csv"}, "unknown corpus format"),
        ({"untagged_fraction": 1.5}, "must lie in"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_corpus(tmp_path, n_clips=2, engine="builtin", workers=1, **kwargs)


@pytest.mark.skipif(not engine_available("espeak"), reason="espeak-ng is not installed")
def test_espeak_corpus_is_deterministic_and_speaks(tmp_path):
    kwargs = dict(n_clips=6, seed=2, engine="espeak", voices=["espeak-us-f3", "espeak-us-m3"], workers=1)
    info = generate_corpus(tmp_path / "a", **kwargs)
    generate_corpus(tmp_path / "b", **kwargs)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert set(info.speaker_counts) <= {"espeak-us-f3", "espeak-us-m3"}
    for record in read_manifest(tmp_path / "a"):
        audio, sr = sf.read(tmp_path / "a" / record["audio"], dtype="float32")
        assert sr == SR and 1.0 < len(audio) / SR < 12.0
        speech = np.ones(len(audio), bool)
        for event in record["events"]:
            speech[event["start_sample"] : event["end_sample"]] = False
        assert np.sqrt(np.mean(audio[speech] ** 2)) > 0.01  # espeak really spoke


@pytest.mark.skipif(not engine_available("flite"), reason="flite is not installed")
def test_flite_corpus(tmp_path):
    info = generate_corpus(tmp_path, n_clips=2, seed=0, engine="flite", voices=["flite-slt"], workers=1)
    assert info.speaker_counts == {"flite-slt": 2} and info.min_seconds > 1.0


def test_worker_processes_give_the_same_bytes(builtin_corpus, tmp_path):
    out, _ = builtin_corpus
    generate_corpus(tmp_path, n_clips=12, seed=5, engine="builtin", untagged_fraction=0.25, workers=2)
    assert tree_digest(tmp_path) == tree_digest(out)
