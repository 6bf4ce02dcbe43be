"""`tagtune prepare` and the corpus readers under adversarial use: every bad input is one clear line (exit 2)
or a rejection with its reason, and nothing written before is lost or changed.

Runs on the shipped tiny base (``tagtune.folders.shipped_base()``) and the small corpora of
``test_data_support``. The SIGKILL-and-resume case runs ``python -m tagtune.cli prepare`` in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tagtune.atomic import FILE_MODE
from tagtune.cli import main
from tagtune.data import PreparedDataset, PrepareSettings, open_source, prepare
from tagtune.data.encode import MAX_CHARS_PER_TEXT_TOKEN, TEXT_TOO_LONG, EncodedText, encode_text
from tagtune.data.for_model import prepare_for_model
from tagtune.data.prepare import DataDirMismatch
from tagtune.data.shards import ShardError
from tagtune.folders import shipped_base
from test_data_support import (
    CLIPS,
    ToyTextEncoder,
    good_manifest_rows,
    speechy,
    tiny_clip_encoder,
    wav_bytes,
    write_clip_files,
    write_parquet,
)

BASE = shipped_base()


def base_vocab_size() -> int:
    """Pieces of the shipped base's tokenizer: the first id a new tag gets."""
    from tagtune.text.tokenizer import TextTokenizer

    return TextTokenizer(BASE / "bpe.model", normalizer=None).vocab_size


TOY = PrepareSettings(max_text_tokens=40, max_mel_tokens=60, val_fraction=0.3, shard_size=4, seed=7)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_line(err: str, command: str = "prepare") -> str:
    """The one line the CLI printed for a user error (log records aside, nothing else on stderr)."""
    lines = [x for x in err.splitlines() if not x.startswith(("DEBUG ", "INFO ", "WARNING "))]
    assert len(lines) == 1 and lines[0].startswith(f"tagtune {command}: error: "), err
    return lines[0]


def _state(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, modification time and mode of every file under ``folder`` (hidden ones too)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in _state(folder).items()}


def _prepare_cli(capsys, data, out, *extra) -> tuple[int, str, str]:
    return _run(capsys, "prepare", "--model", BASE, "--data", data, "--out", out, "--no-progress", "--device", "cpu",
                *extra)


def _rejected(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """Two parquet corpora of the same six clips: one tagged <laughs>/<sighs>, one <giggles>/<sighs>."""
    root = tmp_path_factory.mktemp("adversarial")
    write_parquet(root / "laughs.parquet", with_speaker=True)
    giggles = [(c[0], c[1].replace("<laughs>", "<giggles>"), *c[2:]) for c in CLIPS]
    write_parquet(root / "giggles.parquet", giggles, with_speaker=True)
    return root


@pytest.fixture(scope="module")
def prepared(corpora) -> Path:
    """The laughs corpus prepared for the tiny base, two clips per shard."""
    out = corpora / "prepared"
    assert main(["prepare", "--model", str(BASE), "--data", str(corpora / "laughs.parquet"), "--out", str(out),
                 "--no-progress", "--device", "cpu", "--shard-size", "2"]) == 0
    return out


# ---------------------------------------------------------------- 1: a refused run changes nothing


def test_refused_prepare_keeps_tokenizer_and_tags_of_the_data_folder(corpora, prepared, capsys, tmp_path):
    """Case 1: prepare into a data folder of other inputs is refused before anything in it is rewritten
    (its bpe.model and tags.json used to be replaced, so training used wrong tag ids)."""
    before = _state(prepared)
    code, _, err = _prepare_cli(capsys, corpora / "giggles.parquet", prepared)
    line = _error_line(err)
    assert code == 2 and "prepared from other inputs" in line and "--overwrite" in line
    assert "tags.json differs" in line and "overwrite=True" not in line  # the CLI names its flag, not the API's
    assert _state(prepared) == before
    with pytest.raises(DataDirMismatch, match="overwrite=True") as e:
        prepare_for_model(BASE, str(corpora / "giggles.parquet"), prepared, progress=False, device="cpu",
                          shard_size=2)
    assert "\n" not in str(e.value) and _state(prepared) == before

    rebuilt = tmp_path / "rebuilt"  # --overwrite does rebuild, with the new tags
    for args in ((corpora / "laughs.parquet",), (corpora / "giggles.parquet", "--overwrite")):
        assert _prepare_cli(capsys, args[0], rebuilt, *args[1:])[0] == 0
    tags = [t["tag"] for t in json.loads((rebuilt / "tags.json").read_text())["tags"]]
    assert sorted(tags) == ["<giggles>", "<sighs>"]
    manifest = json.loads((rebuilt / "manifest.json").read_text())
    assert manifest["tag_ids"] == {t["tag"]: t["id"] for t in json.loads((rebuilt / "tags.json").read_text())["tags"]}


def test_prepare_refuses_a_model_folder_or_a_file_as_out(corpora, capsys, tmp_path):
    """Case 1 (wrong files): --out naming a model folder or a file is refused; neither is touched."""
    model = tmp_path / "model"
    model.mkdir()
    for p in BASE.iterdir():
        (model / p.name).write_bytes(p.read_bytes())
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, says in ((model, "is not a data folder of prepare"), (a_file, "is not a folder")):
        before = _state(tmp_path)
        code, _, err = _prepare_cli(capsys, corpora / "laughs.parquet", out)
        assert code == 2 and says in _error_line(err)
        assert _state(tmp_path) == before


# ---------------------------------------------------------------- 2: duplicates


def test_exact_duplicates_dropped_and_conflicting_ids_reported(tmp_path, caplog):
    """Case 2: a clip listed twice (same audio bytes and text, under its own id or another) is kept once and
    the copies are rejected as "duplicate"; one id naming two different clips keeps both and is reported."""
    root = tmp_path / "corpus"
    rows = good_manifest_rows(root)
    (root / "audio" / "copy_of_a1.wav").write_bytes((root / "audio" / "a1.wav").read_bytes())
    rows += [dict(rows[0]),  # the very same row again
             {**rows[0], "audio": "audio/copy_of_a1.wav"},  # the same bytes and text under another id
             {**rows[3], "text": "A different transcript."}]  # the same id (audio path), other text
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        manifest = prepare(open_source(root / "list.jsonl"), tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(),
                           TOY, progress=False)
    dups = [r for r in _rejected(tmp_path / "out") if r["reason"] == "duplicate"]
    assert [(r["index"], r["source_id"]) for r in dups] == [(6, "audio/a1.wav"), (7, "audio/copy_of_a1.wav")]
    assert all("same audio and text as record 0 (audio/a1.wav)" == r["detail"] for r in dups)
    assert manifest["counts"]["accepted"] == 7 and manifest["rejections"] == {"duplicate": 2}
    assert manifest["conflicting_ids"] == ["audio/b1.wav"]
    examples = PreparedDataset(tmp_path / "out", "all").all_examples
    contents = [(e["audio_sha256"], e["text"]) for e in examples]
    assert len(set(contents)) == len(contents) == 7  # no clip can be in train and in validation
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 2 duplicate clip(s)" in warned and "audio/b1.wav" in warned


# ---------------------------------------------------------------- 3: a huge transcript


class _CountingEncoder(ToyTextEncoder):
    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, text: str) -> EncodedText:
        self.seen.append(len(text))
        return super().__call__(text)


def test_huge_transcript_rejected_before_it_is_tokenized(corpora, capsys, tmp_path):
    """Case 3: a 100k-character transcript is refused by its length before normalising/tokenising (it used to
    cost minutes and gigabytes); the limit is a generous number of characters per model text token."""
    encoder = _CountingEncoder()
    limit = 40 * MAX_CHARS_PER_TEXT_TOKEN
    for n, expect_tokenized in ((100_000, False), (limit + 1, False), (limit, True)):
        out = encode_text("x" * n, encoder, max_text_tokens=40)
        assert (len(encoder.seen) > 0) == expect_tokenized
        if not expect_tokenized:
            assert out.reason == TEXT_TOO_LONG and f"{n} characters > {limit}" in out.detail
        encoder.seen.clear()

    root = tmp_path / "corpus"
    rows = good_manifest_rows(root)[:3] + [{"audio": "audio/b1.wav", "text": "word " * 20_000, "speaker": "ben"}]
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _prepare_cli(capsys, root / "list.jsonl", tmp_path / "out")
    assert code == 0 and "prepared 3 of 4 clips" in out
    (rejected,) = _rejected(tmp_path / "out")
    assert rejected["reason"] == "text_too_long" and rejected["detail"].startswith("99999 characters > 1280 ")


# ---------------------------------------------------------------- 4: one clear line instead of a traceback


def _no_audio_column(root: Path) -> Path:
    pq.write_table(pa.table({"text": ["hello there"], "duration": [1.0]}), root / "noaudio.parquet")
    return root / "noaudio.parquet"


def _garbage_parquet(root: Path) -> Path:
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file" * 64)
    return root / "garbage.parquet"


def _empty_folder(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _empty_manifest(root: Path) -> Path:
    (root / "empty.csv").write_text("")
    return root / "empty.csv"


def _csv_without_text(root: Path) -> Path:
    (root / "notext.csv").write_text("audio,speaker\na.wav,anna\n")
    return root / "notext.csv"


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe.parquet")
    return root / "pipe.parquet"


BAD_CORPORA = {
    "parquet without an audio column": (_no_audio_column, "no 'audio' column (it has 'text', 'duration')"),
    "garbage parquet": (_garbage_parquet, "not a readable parquet file"),
    "empty corpus folder": (_empty_folder, "no metadata.csv, no metadata.jsonl and no parquet"),
    "empty manifest": (_empty_manifest, "lists no clips"),
    "csv without a text column": (_csv_without_text, "no 'text' column"),
    "a FIFO as corpus": (_fifo, "not a regular file or folder (a FIFO)"),
}


@pytest.mark.parametrize("case", list(BAD_CORPORA))
def test_bad_corpus_is_one_line_and_creates_no_out(case, capsys, tmp_path):
    """Case 4: a corpus that cannot be read (no audio column, garbage parquet, an empty folder or manifest,
    a FIFO) is one line with exit 2, and --out is not created."""
    make, says = BAD_CORPORA[case]
    code, _, err = _prepare_cli(capsys, make(tmp_path), tmp_path / "out")
    assert code == 2 and says in _error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value,says", [
    ("--val-fraction", "2", "val_fraction must be in [0, 1), got 2.0"),
    ("--val-fraction", "nan", "val_fraction must be in [0, 1), got nan"),
    ("--cond-max-seconds", "-1", "cond_max_seconds -1.0 gives"),
    ("--cond-max-seconds", "inf", "cond_max_seconds must be a finite number"),
    ("--shard-size", "0", "shard_size must be a positive integer, got 0"),
])
def test_bad_settings_refused_before_out_is_created(corpora, capsys, tmp_path, flag, value, says):
    """Case 4: impossible settings (--val-fraction 2, ...) are one line with exit 2, checked before --out is
    created (it used to be left half-made with a tokenizer and tags file)."""
    code, _, err = _prepare_cli(capsys, corpora / "laughs.parquet", tmp_path / "out", flag, value)
    assert code == 2 and says in _error_line(err)
    assert not (tmp_path / "out").exists()


def test_empty_data_folder_is_one_clear_error(capsys, tmp_path):
    """Case 4: an empty (or absent) data folder given to `train --data` is one line with exit 2 and no run
    folder; the reader raises NotPreparedError."""
    from tagtune.data.dataset import NotPreparedError

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(NotPreparedError, match="no prepared data") as e:
            PreparedDataset(folder)
        assert "\n" not in str(e.value)
        code, _, err = _run(capsys, "train", "--data", folder, "--out", tmp_path / "run")
        assert code == 2 and "manifest.json" in _error_line(err, "train")
        assert not (tmp_path / "run").exists()


def test_truncated_shard_is_one_line_and_prepare_remakes_it(corpora, prepared, capsys, tmp_path):
    """Case 4: a truncated shard is reported when the data folder is opened (one line naming the shard), and
    running prepare again remakes it byte for byte."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    shard = data / "shards" / "shard-00001.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ShardError, match="shard-00001.safetensors: damaged") as e:
        PreparedDataset(data, "all")
    assert "\n" not in str(e.value)
    code, _, err = _run(capsys, "train", "--data", data, "--out", tmp_path / "run")
    assert code == 2 and "shard-00001.safetensors" in _error_line(err, "train")
    assert not (tmp_path / "run").exists()  # no half-made run folder
    untouched = _state(data)["shards/shard-00000.safetensors"]
    code, _, _ = _prepare_cli(capsys, corpora / "laughs.parquet", data, "--shard-size", "2")
    assert code == 0 and shard.read_bytes() == intact
    assert _state(data)["shards/shard-00000.safetensors"] == untouched  # the good shards are reused
    assert _bytes(data) == _bytes(prepared)
    assert len(PreparedDataset(data, "all")) == 6


# ---------------------------------------------------------------- 5: temp files and file modes


def test_temp_files_of_killed_runs_swept_and_shards_get_the_usual_mode(corpora, prepared, capsys, tmp_path):
    """Case 5: temporary files a killed run left (a shard's ".NAME.tmpPID", an atomic write's ".NAME.X.tmp")
    are removed when prepare starts; shards get the same mode as every other file (they were 0600)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    leftovers = [data / "shards" / ".shard-00002.safetensors.tmp4242", data / ".manifest.json.k3j4.tmp",
                 data / "shards" / ".shard-00001.safetensors.777.tmp"]
    for p in leftovers:
        p.write_bytes(b"\0" * 4096)
    assert _prepare_cli(capsys, corpora / "laughs.parquet", data, "--shard-size", "2")[0] == 0
    assert not any(p.exists() for p in leftovers)
    assert _bytes(data) == _bytes(prepared)
    modes = {name: mode for name, (_, _, mode) in _state(prepared).items()}
    assert set(modes.values()) == {FILE_MODE}, modes


# ---------------------------------------------------------------- 6 and 7: what audio paths may name


def test_devices_fifos_and_folders_are_not_regular_files(tmp_path):
    """Case 6: audio paths naming a device (through a symlink), a FIFO or a folder are rejected as "not a
    regular file" saying what they are (they were "file not found"); a broken link says so."""
    root = tmp_path / "corpus"
    rows = good_manifest_rows(root)[:3]
    os.symlink("/dev/zero", root / "zero.wav")
    os.mkfifo(root / "fifo.wav")
    (root / "folder.wav").mkdir()
    os.symlink(root / "gone.wav", root / "broken.wav")
    for name in ("zero.wav", "fifo.wav", "folder.wav", "broken.wav"):
        rows.append({"audio": name, "text": "fine text", "speaker": "anna"})
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = prepare(open_source(root / "list.jsonl"), tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(),
                       TOY, progress=False)
    got = {r["source_id"]: (r["reason"], r["detail"]) for r in _rejected(tmp_path / "out")}
    assert got == {
        "zero.wav": ("not_a_file", f"not a regular file (a character device): {root / 'zero.wav'}"),
        "fifo.wav": ("not_a_file", f"not a regular file (a FIFO): {root / 'fifo.wav'}"),
        "folder.wav": ("not_a_file", f"not a regular file (a folder): {root / 'folder.wav'}"),
        "broken.wav": ("missing_audio", f"broken symbolic link: {root / 'broken.wav'} -> {root / 'gone.wav'}"),
    }
    assert manifest["counts"]["accepted"] == 3


def test_manifest_paths_outside_the_corpus_resolve_against_the_manifest(tmp_path, monkeypatch):
    """Case 7 (policy): audio paths may lie outside the corpus folder; relative ones are resolved against the
    manifest's own folder (never the working directory), absolute ones are used as they are."""
    elsewhere = write_clip_files(tmp_path / "elsewhere", CLIPS[:2])
    corpus = tmp_path / "corpus" / "lists"
    corpus.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")  # "a1.wav" exists here, but not beside the manifest
    rows = [{"audio": "../../elsewhere/a1.wav", "text": "Up and out.", "speaker": "anna"},
            {"audio": str(elsewhere[1]), "text": "Absolute.", "speaker": "anna"},
            {"audio": "a1.wav", "text": "Not beside the manifest.", "speaker": "anna"}]
    (corpus / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = prepare(open_source(corpus / "list.jsonl"), tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(),
                       TOY, progress=False)
    assert manifest["counts"]["accepted"] == 2
    (rejected,) = _rejected(tmp_path / "out")
    assert rejected["reason"] == "missing_audio" and rejected["detail"] == f"file not found: {corpus / 'a1.wav'}"


# ---------------------------------------------------------------- 8: a corrupt parquet row


def test_corrupt_parquet_row_names_its_audio_path(tmp_path):
    """Case 8: a corrupt row of an Elise-style parquet is reported with the clip's own audio.path and a
    readable detail (it was "Error opening <_io.BytesIO object at 0x...>")."""
    path = write_parquet(tmp_path / "train-00000-of-00001.parquet")
    table = pq.read_table(path).to_pydict()
    table["audio"][2] = {"bytes": b"RIFF\x00\x00garbage" * 50, "path": "elise_0002.wav"}
    table["audio"][4] = {"bytes": wav_bytes(speechy(1.0))[:30], "path": "elise_0004.wav"}
    pq.write_table(pa.table(table), path)
    prepare(open_source(path), tmp_path / "out", tiny_clip_encoder(), ToyTextEncoder(), TOY, progress=False)
    got = {r["source_id"]: r for r in _rejected(tmp_path / "out")}
    assert sorted(got) == ["train-00000-of-00001:2", "train-00000-of-00001:4"]
    assert got["train-00000-of-00001:2"]["detail"] == "elise_0002.wav: LibsndfileError: Format not recognised."
    assert got["train-00000-of-00001:4"]["detail"].startswith("elise_0004.wav: LibsndfileError: Error in WAV file")
    assert all(r["reason"] == "undecodable_audio" and "object at 0x" not in r["detail"] for r in got.values())


# ---------------------------------------------------------------- 9: variants in one tag list


def test_tags_add_merges_variants_listed_together(capsys, tmp_path):
    """Case 9: `tags add --tags "<giggles>,<Laughs>,<laugh>,<sighs>"` adds three tags (<laugh> is <laughs>)
    instead of failing with "is a variant of a tag that maps elsewhere"."""
    from tagtune.tags.vocab import TagSet

    code, out, err = _run(capsys, "tags", "add", "--model", BASE, "--tags", "<giggles>,<Laughs>,<laugh>,<sighs>",
                          "--out", tmp_path / "model")
    assert code == 0, err
    tags = TagSet.load(tmp_path / "model" / "tags.json")
    assert tags.tags == ["<giggles>", "<laughs>", "<sighs>"]
    n = base_vocab_size()  # the new tags follow the base's own pieces
    assert tags.token_ids == {"<giggles>": n, "<laughs>": n + 1, "<sighs>": n + 2}
    assert tags.resolve("<LAUGH>") == "<laughs>" and f"added <laughs> -> id {n + 1}" in out


def test_prepare_tag_list_merges_variants(corpora, capsys, tmp_path):
    """Case 9 (prepare): --tags "<Laughs>,<laugh>,<sighs>" is two tags for prepare as well."""
    code, _, err = _prepare_cli(capsys, corpora / "laughs.parquet", tmp_path / "out", "--tags",
                                "<Laughs>,<laugh>,<sighs>")
    assert code == 0, err
    n = base_vocab_size()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tag_ids"] == {"<laughs>": n, "<sighs>": n + 1}


# ---------------------------------------------------------------- cases that held: keep them held


def test_killed_prepare_resumes_to_a_byte_identical_folder(tmp_path, capsys):
    """Held: `tagtune prepare` SIGKILLed after its first shard, then run again, gives the same bytes as a run
    that was never interrupted (the finished shards are reused, the killed run's temp files swept)."""
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    clips = [(f"c{i:02d}", f"Clip {w} <laughs> here." if i % 2 else f"Plain clip {w}.", "anna" if i % 3 else "ben",
              1.0 + 0.05 * i, 24000) for i, w in enumerate(words.split())]
    paths = write_clip_files(tmp_path / "corpus", clips)
    rows = [{"audio": p.name, "text": c[1], "speaker": c[2]} for p, c in zip(paths, clips)]
    listing = tmp_path / "corpus" / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["prepare", "--model", str(BASE), "--data", str(listing), "--no-progress", "--device", "cpu",
            "--shard-size", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tagtune.cli", *argv, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "shards").glob("shard-*.safetensors")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert not (killed / "manifest.json").exists()  # killed mid-way
    finished = {p: p.stat().st_mtime_ns for p in (killed / "shards").glob("shard-*.safetensors")}
    assert 1 <= len(finished) < 16

    assert main([*argv, "--out", str(killed)]) == 0
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert _bytes(killed) == _bytes(tmp_path / "whole")
    assert json.loads((killed / "manifest.json").read_text())["counts"]["accepted"] == 16


def test_malicious_yaml_tag_map_is_refused(corpora, capsys, tmp_path):
    """Held: a tag map with a Python object tag (!!python/object/apply:os.system) is refused with one line and
    exit 2; nothing runs and nothing is written."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "map.yaml"
    evil.write_text(f'"<chuckles>": !!python/object/apply:os.system ["touch {marker}"]\n')
    for argv in (("prepare", "--model", BASE, "--data", corpora / "laughs.parquet", "--out", tmp_path / "out",
                  "--tag-map", evil, "--no-progress"),
                 ("tags", "scan", "--data", corpora / "laughs.parquet", "--tag-map", evil)):
        code, _, err = _run(capsys, *argv)
        line = _error_line(err, "tags scan" if argv[0] == "tags" else argv[0])
        assert code == 2 and f"{evil}: not a valid tag map at line 1" in line
        assert not marker.exists() and not (tmp_path / "out").exists()


def test_bad_audio_rejected_with_reasons_while_the_run_goes_on(capsys, tmp_path):
    """Held: corrupt, NaN, silent and truncated audio items are rejected with their reasons in rejected.jsonl
    and the good clips are prepared."""
    root = tmp_path / "corpus"
    rows = good_manifest_rows(root)
    nan = speechy(1.0)
    nan[500] = np.nan
    bad = {"corrupt.wav": b"<html>not audio</html>" * 40, "nan.wav": wav_bytes(nan, subtype="FLOAT"),
           "silent.wav": wav_bytes(np.zeros(24000, np.float32)), "truncated.wav": wav_bytes(speechy(1.0))[:30]}
    for name, data in bad.items():
        (root / name).write_bytes(data)
        rows.append({"audio": name, "text": "fine text", "speaker": "anna"})
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _prepare_cli(capsys, root / "list.jsonl", tmp_path / "out")
    assert code == 0 and "prepared 6 of 10 clips" in out
    got = {r["source_id"]: r["reason"] for r in _rejected(tmp_path / "out")}
    assert got == {"corrupt.wav": "undecodable_audio", "nan.wav": "non_finite_audio", "silent.wav": "silent_audio",
                   "truncated.wav": "undecodable_audio"}
