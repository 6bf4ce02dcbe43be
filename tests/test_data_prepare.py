"""``prepare`` end to end: exact rejections, manifest, split, references, reader, resume, changed inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import tagtune.data.pipeline as pipeline
from tagtune.data import (
    DataDirMismatch,
    LengthBucketSampler,
    PreparedDataset,
    PrepareSettings,
    collate,
    decode_clip,
    open_source,
    prepare,
)
from tagtune.data.decode import DecodeSettings
from test_data_support import CLIPS, ToyTextEncoder, good_manifest_rows, speechy, tiny_clip_encoder, wav_bytes

SETTINGS = PrepareSettings(max_text_tokens=40, max_mel_tokens=60, val_fraction=0.3, shard_size=5, seed=7)
EXPECTED_REJECTIONS = {
    "bad_record": 2, "bad_sample_rate": 1, "empty_audio": 1, "empty_text": 2, "missing_audio": 1,
    "non_finite_audio": 2, "silent_audio": 1, "text_too_long": 1, "too_long": 1, "too_many_channels": 1,
    "too_short": 1, "undecodable_audio": 2, "undecodable_text": 1, "unknown_pieces": 1,
}


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    nan = speechy(1.0)
    nan[100] = np.nan
    inf = speechy(1.0)
    inf[7] = -np.inf
    files = {
        "empty.wav": b"", "truncated.wav": wav_bytes(speechy(1.0))[:30], "notaudio.wav": b"<html>oops</html>" * 40,
        "nan.wav": wav_bytes(nan, subtype="FLOAT"), "inf.wav": wav_bytes(inf, subtype="FLOAT"),
        "silence.wav": wav_bytes(np.zeros(24000, np.float32)), "rate1k.wav": wav_bytes(speechy(1.0, 1000), 1000),
        "ch16.wav": wav_bytes(speechy(1.0, channels=16)), "short.wav": wav_bytes(speechy(0.2)),
        "long.wav": wav_bytes(speechy(4.0)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return ["missing.wav", *files]


def write_bad_corpus(root):
    """6 good clips (2 speakers) + 18 bad records, one JSONL manifest."""
    lines = [json.dumps(r).encode() for r in good_manifest_rows(root)]
    for name in _bad_files(root / "bad"):
        lines.append(json.dumps({"audio": f"bad/{name}", "text": "fine text", "speaker": "anna"}).encode())
    good = "audio/a1.wav"
    for text in ["", "  \t ", "has § inside", "x" * 41]:
        lines.append(json.dumps({"audio": good, "text": text, "speaker": "anna"}).encode())
    lines.append(b'{"audio": "audio/a1.wav", "text": "caf\xe9 latin-1"}')  # not UTF-8
    lines += [b'{"audio": "audio/a1.wav", "text": ', json.dumps({"text": "no audio key"}).encode()]
    path = root / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    source = open_source(write_bad_corpus(root / "src"))
    manifest = prepare(source, root / "out", tiny_clip_encoder(), ToyTextEncoder(), SETTINGS,
                       base_checkpoint_hash="abc123", progress=False)
    return root, manifest


def test_bad_inputs_rejected_with_exact_reasons(prepared):
    root, manifest = prepared
    assert manifest["rejections"] == EXPECTED_REJECTIONS
    assert manifest["counts"] == {"records": 24, "accepted": 6, "rejected": 18, "train": 4, "val": 2, "tagged": 4}
    rejected = [json.loads(x) for x in (root / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [r["source_id"] for r in rejected][:3] == ["bad/missing.wav", "bad/empty.wav", "bad/truncated.wav"]
    assert sorted({r["reason"] for r in rejected}) == sorted(EXPECTED_REJECTIONS)
    assert manifest["base_checkpoint_hash"] == "abc123" and manifest["tagtune_version"]
    assert manifest["hours"]["total"] == pytest.approx(sum(c[3] for c in CLIPS) / 3600, abs=1e-5)


def test_split_stratified_and_references_other_clip_same_speaker(prepared):
    root, manifest = prepared
    assert manifest["tags"] == {"<laughs>": {"total": 2, "train": 1, "val": 1},
                                "<sighs>": {"total": 2, "train": 1, "val": 1}}
    examples = PreparedDataset(root / "out", "all").all_examples
    assert manifest["conditioning"] == {"other": 6}
    for e in examples:
        ref = examples[e["cond"]]
        assert ref["source_id"] != e["source_id"] and ref["speaker"] == e["speaker"]


def test_reader_returns_what_the_encoders_give_without_source_audio(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "moved"
    shutil.copytree(root / "out", out)  # the source folder is not needed any more
    ds = PreparedDataset(out, "all")
    enc = tiny_clip_encoder()
    wav = decode_clip(str(root / "src" / "audio" / "a2.wav"), DecodeSettings())
    mel, codes = enc.encode([wav])[0]
    item = next(ds[i] for i in range(len(ds)) if ds[i]["source_id"] == "audio/a2.wav")
    assert torch.equal(item["codes"], codes) and item["wav_len"] == len(wav) == 21600
    assert item["text_ids"].tolist() == ToyTextEncoder()("A quiet evening.").ids
    ref_wav = decode_clip(str(root / "src" / item["cond_source_id"]), DecodeSettings())
    torch.testing.assert_close(item["cond_mel"], enc.encode([ref_wav])[0][0], rtol=0, atol=0)
    assert item["speaker"] == "anna" and item["has_tag"] is False


def test_sampler_and_collate(prepared):
    ds = PreparedDataset(prepared[0] / "out", "all")
    sampler = LengthBucketSampler(ds.lengths(), batch_size=4, shuffle=True, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(6)) and [len(b) for b in batches] in ([4, 2], [2, 4])
    assert batches == list(sampler)  # same epoch, same order
    b = collate([ds[i] for i in batches[0]])
    n = len(batches[0])
    assert b["text_ids"].shape == (n, int(b["text_lengths"].max()))
    assert b["cond_mels"].shape == (n, 100, int(b["cond_mel_lengths"].max()))
    row = int(b["code_lengths"].argmin())
    assert (b["codes"][row, b["code_lengths"][row]:] == 8193).all()
    assert (b["text_ids"][int(b["text_lengths"].argmin()), int(b["text_lengths"].min()):] == 1).all()
    capped = LengthBucketSampler(ds.lengths(), batch_size=8, max_tokens=max(ds.lengths()) * 2, shuffle=False)
    assert all(len(bb) <= 2 for bb in capped) and sum(len(bb) for bb in capped) == 6


def _snapshot(out):
    """Everything a reader sees, independent of file times and absolute paths."""
    from safetensors.torch import load_file

    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("source")
    shards = {p.name: {k: v.tolist() for k, v in load_file(p).items()} for p in sorted((out / "shards").iterdir())}
    rejected = [{k: v for k, v in json.loads(x).items() if k != "detail"}  # details name absolute paths
                for x in (out / "rejected.jsonl").read_text().splitlines()]
    return manifest, (out / "examples.jsonl").read_text(), rejected, shards


def test_resume_after_interruption_and_changed_settings(prepared, tmp_path, monkeypatch):
    root, _ = prepared
    shutil.copytree(root / "src", tmp_path / "src")
    source = open_source(tmp_path / "src" / "corpus.jsonl")
    real_write, calls = pipeline.write_shard, []

    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third shard is being written
        real_write(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(), SETTINGS, progress=False)
    monkeypatch.setattr(pipeline, "write_shard", real_write)
    shards = sorted((tmp_path / "out" / "shards").iterdir())
    assert [p.name for p in shards] == ["shard-00000.safetensors", "shard-00001.safetensors"]  # no temp left
    times = [p.stat().st_mtime_ns for p in shards]
    prepare(source, tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(), SETTINGS, progress=False,
            base_checkpoint_hash="abc123")
    assert [p.stat().st_mtime_ns for p in shards] == times  # finished shards reused
    assert _snapshot(tmp_path / "out") == _snapshot(root / "out")

    changed = PrepareSettings(**{**SETTINGS.__dict__, "trim_silence": True})
    with pytest.raises(DataDirMismatch, match="setting trim_silence: False -> True"):
        prepare(source, tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(), changed, progress=False)
    sf.write(tmp_path / "src" / "audio" / "b3.wav", speechy(1.0, seed=9), 24000)  # one clip edited in place
    with pytest.raises(DataDirMismatch, match=r"records differ in shards \[1\]"):
        prepare(open_source(tmp_path / "src" / "corpus.jsonl"), tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(),
                SETTINGS, progress=False)
    manifest = prepare(source, tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(), changed, progress=False,
                       overwrite=True)
    assert manifest["settings"]["trim_silence"] is True and manifest["counts"]["accepted"] == 6
