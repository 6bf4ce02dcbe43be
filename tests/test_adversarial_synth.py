"""Adversarial use of synthesis, the web page and export: every bad input is one line (exit 2) or a reported
rejection, checked before work is spent, and nothing written earlier is lost or left half-written.

Each test's docstring names the adversarial case it covers. Synthesis runs on the shipped tiny base.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tagtune.cli  # noqa: F401 - imported up front: the read-only test forbids reading the interpreter's files
import tagtune.synthesis.jobs  # noqa: F401
from tagtune.audio import AudioError, load_audio, load_reference
from tagtune.cli import main
from tagtune.errors import UserError
from tagtune.folders import shipped_base
from tagtune.synthesis.reference import ReferenceAudioError, read_reference_audio
from tagtune.synthesis.tts import MAX_TEXT_CHARS, TTS
from tagtune.tags import TagSet, add_tag_pieces
from tagtune.webui import Limits, RequestError, synthesize_pair

EXPORT = importlib.import_module("tagtune.export")  # the module (tagtune.export may be the package's function)
RATE = 24000
TEXT = "Hello there."
NOBODY = 65534


# ------------------------------------------------------------------------------------------------ helpers


def write_voice(path: Path, seconds: float = 1.5, rate: int = RATE, samples=None, subtype: str = "PCM_16") -> Path:
    """A small reference: a buzzy tone with a little noise (or the given samples)."""
    if samples is None:
        t = np.arange(int(seconds * rate)) / rate
        rng = np.random.default_rng(0)
        samples = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype=subtype)
    return path


def cli(capsys, *args) -> tuple[int, list[str]]:
    """Exit code and the non-empty stderr lines of ``tagtune ARGS``, less INFO progress lines (an item written
    before a failing one is reported as it is written)."""
    rc = main([str(a) for a in args])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("INFO ")]


def assert_one_line(lines: list[str], command: str, *needles: str) -> str:
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tagtune {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def earlier_output(path: Path) -> bytes:
    """An output from an earlier run at ``path``: it must survive a refused run unchanged."""
    write_voice(path, seconds=0.5)
    return path.read_bytes()


def model_copy(folder: Path, **replace: bytes) -> Path:
    """The shipped base as links, with some files replaced by the given bytes."""
    folder.mkdir(parents=True)
    for src in shipped_base().iterdir():
        if src.name not in replace:
            (folder / src.name).symlink_to(src)
    for name, data in replace.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if anything of the model is opened: the check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was opened before the input was checked")
    monkeypatch.setattr("tagtune.loaders.load_model", refuse)
    monkeypatch.setattr(TTS, "load", classmethod(refuse))


@pytest.fixture
def no_networks(monkeypatch):
    """Fails the test if the networks load (the tokenizer may): text is checked before them."""
    def refuse(*args, **kwargs):
        raise AssertionError("the networks were loaded before the text was checked")
    monkeypatch.setattr(TTS, "load", classmethod(refuse))


@pytest.fixture
def read_only_dir():
    """A folder of mode 0555 that this thread cannot write in. Modes do not stop root, so for root the
    thread's filesystem uid becomes nobody's (Linux setfsuid) while the test runs."""
    folder = Path(tempfile.mkdtemp(prefix="tagtune-read-only-"))
    folder.chmod(0o555)
    libc = ctypes.CDLL(None, use_errno=True) if os.geteuid() == 0 else None
    if libc is not None:
        libc.setfsuid(NOBODY)
    try:
        with pytest.raises(PermissionError):
            (folder / "probe").write_bytes(b"")
        yield folder
    finally:
        if libc is not None:
            libc.setfsuid(0)
        folder.chmod(0o755)
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def tts():
    return TTS.load(shipped_base(), precision="fp32")


@pytest.fixture(scope="module")
def tagged_model(tmp_path_factory) -> Path:
    """The shipped base with a tokenizer and tags file that know <laughs> and <sighs> (text checks only)."""
    bpe, ids = add_tag_pieces(shipped_base() / "bpe.model", ["<laughs>", "<sighs>"])
    folder = tmp_path_factory.mktemp("tagged") / "model"
    model_copy(folder, **{"bpe.model": bpe})
    TagSet(["<laughs>", "<sighs>"]).with_token_ids(ids).save(folder / "tags.json")
    return folder


class NoSynthesis:
    """A TTS stand-in that fails the test if a request reaches synthesis."""

    known_tags: list[str] = []
    references = types.SimpleNamespace(max_seconds=0)
    max_sentence_tokens = 120  # the limits the page's settings show
    gpt = types.SimpleNamespace(cfg=types.SimpleNamespace(max_mel_tokens=600, max_text_tokens=160))

    def synthesize(self, *args, **kwargs):
        raise AssertionError("the request reached synthesis")


# ------------------------------------------------------------- 1. corrupt and silent references


def _bad_samples(kind: str) -> np.ndarray:
    x = 0.3 * np.sin(2 * np.pi * 150 * np.arange(RATE * 2) / RATE)
    if kind == "nan":
        x[100:200] = np.nan
    elif kind == "inf":
        x[5000] = np.inf
    elif kind == "zeros":
        x[:] = 0.0
    elif kind == "near silence":
        x *= 1e-4  # -80 dBFS
    return x.astype(np.float32)


BAD_SIGNALS = [("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("zeros", "silent"),
               ("near silence", "silent")]


@pytest.mark.parametrize("kind, message", BAD_SIGNALS)
def test_cli_refuses_a_corrupt_or_silent_reference(kind, message, tmp_path, capsys, no_model_load):
    """Case 1: a reference with NaN/inf samples (or silence) gave exit 0 and seconds of zeros; now exit 2,
    one line, before the model is opened, and the earlier output is untouched."""
    ref = write_voice(tmp_path / "ref.wav", samples=_bad_samples(kind), subtype="FLOAT")
    out = tmp_path / "out.wav"
    before = earlier_output(out)
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", ref, "--text", TEXT, "--out", out)
    assert rc == 2
    assert_one_line(lines, "synth", f"reference audio {ref}", message)
    assert out.read_bytes() == before


@pytest.mark.parametrize("kind, message", BAD_SIGNALS)
@pytest.mark.parametrize("form", ["path", "bytes", "array"])
def test_library_refuses_a_corrupt_or_silent_reference_in_every_form(kind, message, form, tmp_path):
    """Case 1: the same refusal for a path, encoded bytes and a (rate, samples) recording."""
    samples = _bad_samples(kind)
    path = write_voice(tmp_path / "ref.wav", samples=samples, subtype="FLOAT")
    source = {"path": path, "bytes": path.read_bytes(), "array": (RATE, samples)}[form]
    with pytest.raises(ReferenceAudioError, match=message) as e:
        read_reference_audio(source)
    assert "\n" not in str(e.value)


def test_a_good_reference_still_reads(tmp_path):
    """Case 1 (control): the signal checks accept an ordinary voice, so the refusals above can fail."""
    wav, trimmed = read_reference_audio(write_voice(tmp_path / "ok.wav"))
    assert wav.shape == (1, int(1.5 * RATE)) and not trimmed


# ------------------------------------------------------------------------- 2. export is atomic

KILL_AT_VOCODER = """
import os, shutil, signal, sys
from tagtune.export import export

real_copy2 = shutil.copy2

def copy2(src, dst, **kwargs):  # the vocoder is half copied when the process is killed
    if os.path.basename(str(dst)) == "bigvgan_generator.pth":
        data = open(src, "rb").read()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_copy2(src, dst, **kwargs)

shutil.copy2 = copy2
export(sys.argv[1], sys.argv[2], overwrite=True)
"""


def _kill_export_at_the_vocoder(run_dir: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "kill_export.py"
    script.write_text(KILL_AT_VOCODER, encoding="utf-8")
    return subprocess.run([sys.executable, str(script), str(run_dir), str(out)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-an-adapter-export"])
def test_export_killed_while_copying_the_vocoder_leaves_no_model_lookalike(earlier, trained_run, tmp_path, capsys):
    """Case 2: SIGKILL during export left a truncated bigvgan_generator.pth under its final name; now the
    folder is staged and published whole: a kill leaves the earlier export (or nothing), and the next
    export sweeps the staging folder and writes a complete model."""
    run_dir = trained_run[0]
    out = tmp_path / "model"
    if earlier:
        assert cli(capsys, "export", "--run", run_dir, "--out", out, "--adapter-only")[0] == 0
    before = snapshot(out) if earlier else None
    killed = _kill_export_at_the_vocoder(run_dir, out, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if earlier:
        assert snapshot(out) == before
    else:
        assert not out.exists()
    assert [p for p in tmp_path.iterdir() if ".staging-" in p.name]  # the killed build, beside the folder
    rc, lines = cli(capsys, "export", "--run", run_dir, "--out", out, "--overwrite")
    assert rc == 0, lines
    base = json.loads((run_dir / "run.json").read_text())["base"]["dir"]
    assert (out / "bigvgan_generator.pth").read_bytes() == (Path(base) / "bigvgan_generator.pth").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or ".old-" in p.name]


def test_export_overwrite_replaces_an_adapter_export_whole(trained_run, tmp_path, capsys):
    """Case 2: `export --overwrite` over an adapter export kept the stale adapter files; now the merged
    export replaces the folder whole."""
    out = tmp_path / "export"
    assert cli(capsys, "export", "--run", trained_run[0], "--out", out, "--adapter-only")[0] == 0
    assert (out / "adapter_config.json").is_file()
    rc, lines = cli(capsys, "export", "--run", trained_run[0], "--out", out, "--overwrite")
    assert rc == 0, lines
    assert {p.name for p in out.iterdir()} == {"config.yaml", "gpt.pth", "bpe.model", "tags.json", "dvae.pth",
                                               "bigvgan_generator.pth", "provenance.json", "tag_init.safetensors"}
    assert json.loads((out / "provenance.json").read_text())["format"] == "indextts-merged"


def _out_is_a_file(tmp_path, run_dir):
    out = tmp_path / "model"
    out.write_bytes(b"an earlier file")
    return ["--out", out], "a file of that name exists", tmp_path


def _out_not_empty(tmp_path, run_dir):
    out = tmp_path / "model"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "notes.txt").write_text("mine")
    return ["--out", out], "is not empty", tmp_path


def _out_foreign_folder(tmp_path, run_dir):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    return ["--out", out, "--overwrite"], "is not a tagtune export", tmp_path


def _out_is_the_run(tmp_path, run_dir):
    return ["--out", run_dir, "--overwrite"], "overlaps the training run", run_dir


def _out_holds_the_run(tmp_path, run_dir):
    return ["--out", run_dir.parent, "--overwrite"], "overlaps the training run", run_dir.parent


def _out_under_a_file(tmp_path, run_dir):
    (tmp_path / "plain").write_text("a file")
    return ["--out", tmp_path / "plain" / "model"], "is a file, not a folder", tmp_path


@pytest.mark.parametrize("case", [_out_is_a_file, _out_not_empty, _out_foreign_folder, _out_is_the_run,
                                  _out_holds_the_run, _out_under_a_file])
def test_export_refusals_come_before_any_work(case, trained_run, tmp_path, capsys, monkeypatch):
    """Case 2: --out is checked (writable, not a foreign or non-empty folder, not the run) before any
    work; a refusal is one line and changes nothing."""
    def no_work(*args, **kwargs):
        raise AssertionError("export started before --out was checked")
    monkeypatch.setattr(EXPORT, "publish_folder", no_work)
    args, message, watched = case(tmp_path, trained_run[0])
    before = snapshot(watched)
    rc, lines = cli(capsys, "export", "--run", trained_run[0], *args)
    assert rc == 2
    assert_one_line(lines, "export", message)
    assert snapshot(watched) == before


def _damage(run: Path, what: str) -> str:
    info = json.loads((run / "run.json").read_text())
    if what == "run.json a list":
        (run / "run.json").write_text("[]")
        return "missing or malformed mode"
    if what == "run.json without base":
        del info["base"]
        (run / "run.json").write_text(json.dumps(info))
        return "missing or malformed base"
    (run / "best" / "tagtune_adapter.json").unlink()
    return "tagtune_adapter.json: not found"


@pytest.mark.parametrize("what", ["run.json a list", "run.json without base", "weights without their meta"])
def test_export_of_a_damaged_run_is_one_line(what, trained_run, tmp_path, capsys):
    """Case 2: a damaged run (garbage run.json, weights folder without its meta file) is one line, and
    nothing is written at --out."""
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    message = _damage(run, what)
    rc, lines = cli(capsys, "export", "--run", run, "--out", tmp_path / "model", "--adapter-only")
    assert rc == 2
    assert_one_line(lines, "export", message)
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------------------- 3. unbounded work


def test_text_over_the_limit_is_refused_before_normalising(tmp_path, capsys, no_networks, monkeypatch):
    """Case 3: `synth --text` of 50k characters ran 15 minutes to 9 GB; now one short line, counted
    before the normaliser runs."""
    monkeypatch.setattr("tagtune.text.tokenizer.TextTokenizer.preprocess",
                        lambda *a: pytest.fail("the text was normalised before its length was checked"))
    out = tmp_path / "out.wav"
    before = earlier_output(out)
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", write_voice(tmp_path / "ref.wav"),
                    "--text", "Hello there. " * 4000, "--out", out)
    assert rc == 2
    line = assert_one_line(lines, "synth", "52000 characters; the limit is 2000")
    assert len(line) < 200 and MAX_TEXT_CHARS == 2000
    assert out.read_bytes() == before


def test_long_reference_is_read_only_up_to_the_limit(tmp_path, monkeypatch):
    """Case 3: a 1-hour reference was decoded whole before trimming; now only the first
    MAX_REFERENCE_SECONDS (and a few ms the resampler looks ahead) are decoded, with the same result."""
    long = write_voice(tmp_path / "long.wav", seconds=10.0, rate=16000)
    decoded = []
    real = load_audio

    def spy(source, max_seconds=None):
        wav, sr = real(source, max_seconds)
        decoded.append(wav.shape[-1] / sr)
        return wav, sr

    monkeypatch.setattr("tagtune.audio.load_audio", spy)
    wav, trimmed = read_reference_audio(long, max_seconds=2.0)
    assert trimmed and wav.shape == (1, 2 * RATE)
    assert decoded and max(decoded) < 2.1  # not the 10 s in the file
    whole = load_reference(long)[:, : 2 * RATE]  # decoded whole, then cut: the old way
    np.testing.assert_allclose(wav.numpy(), whole.numpy(), rtol=0, atol=1e-6)


def test_long_reference_is_trimmed_in_synthesis_too(tts, tmp_path):
    """Case 3: the reference cache of a TTS uses the bounded read (first 30 s of a 40 s file)."""
    ref = tts.reference(write_voice(tmp_path / "long.wav", seconds=40.0, rate=8000))
    assert ref.trimmed and ref.seconds == 30.0


def _big_upload(tmp_path):
    path = write_voice(tmp_path / "up" / "big.wav", seconds=3.0)  # 144 kB
    return path, Limits(max_upload_bytes=50_000), "is 141 kB; the limit is 49 kB"


def _long_upload(tmp_path):  # 150 s at 4 kHz, 8-bit: small in bytes, long in time
    path = write_voice(tmp_path / "up" / "long.wav", seconds=150.0, rate=4000, subtype="PCM_U8")
    return path, Limits(), "150 s long; the limit is 120 s"


@pytest.mark.parametrize("upload", [_big_upload, _long_upload])
def test_page_upload_limits_are_checked_before_decoding(upload, tmp_path, monkeypatch):
    """Case 3: the page accepted 200 MB uploads and decoded 72 minutes whole; now size and duration
    (from the header) are refused before any decoding or synthesis."""
    monkeypatch.setattr("tagtune.audio.load_audio", lambda *a, **k: pytest.fail("the upload was decoded"))
    path, limits, message = upload(tmp_path)
    with pytest.raises(RequestError, match=message) as e:
        synthesize_pair(NoSynthesis(), NoSynthesis(), TEXT, str(path), 0, limits=limits)
    assert str(tmp_path) not in str(e.value) and "\n" not in str(e.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_listens_on_localhost_refuses_big_uploads_and_cleans_its_files(monkeypatch):
    """Case 3/5 and held: the page binds 127.0.0.1 by default, the server refuses an over-size upload
    while it streams in, raw exceptions are not shown, and its uploads are deleted when it stops."""
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    from tagtune.webui import launch_webui

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setattr(TTS, "load", classmethod(lambda cls, *a, **k: NoSynthesis()))
    port = _free_port()
    demo = launch_webui(shipped_base(), port=port, block=False, limits=Limits(max_upload_bytes=100_000))
    try:
        assert demo.server_name == "127.0.0.1" and demo.local_url.startswith(f"http://127.0.0.1:{port}")
        assert demo.show_error is False
        upload = f"http://127.0.0.1:{port}/gradio_api/upload"
        big = httpx.post(upload, files={"files": ("big.wav", b"x" * 200_000)}, timeout=30)
        assert big.status_code == 413
        small = httpx.post(upload, files={"files": ("small.wav", b"y" * 1000)}, timeout=30)
        assert small.status_code == 200
        stored = Path(small.json()[0])
        assert stored.is_file() and not list(stored.parent.parent.glob("*/big.wav"))
    finally:
        demo.close()
    assert not stored.exists()


# ------------------------------------------------------------------------ 4. outputs checked first


def _out_existing_dir(tmp_path):
    out = tmp_path / "outdir"
    out.mkdir()
    return out, "it is a folder"


def _out_below_a_file(tmp_path):
    (tmp_path / "plain.txt").write_text("a file")
    return tmp_path / "plain.txt" / "out.wav", "is a file, not a folder"


def _out_fifo(tmp_path):
    out = tmp_path / "pipe.wav"
    os.mkfifo(out)
    return out, "not a regular file"


@pytest.mark.parametrize("case", [_out_existing_dir, _out_below_a_file, _out_fifo])
def test_unwritable_out_is_refused_before_the_model_loads(case, tmp_path, capsys, no_model_load):
    """Case 4: `synth --out` on a directory or an unwritable path failed after 40 s of synthesis; now
    one line before anything of the model is opened."""
    out, message = case(tmp_path)
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", write_voice(tmp_path / "ref.wav"),
                    "--text", TEXT, "--out", out)
    assert rc == 2
    assert_one_line(lines, "synth", message)


def test_read_only_out_folder_is_refused_before_the_model_loads(read_only_dir, capsys, no_model_load):
    """Case 4: `synth --out` in a read-only folder is one line before the model is opened."""
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", "unused.wav", "--text", TEXT,
                    "--out", read_only_dir / "out.wav")
    assert rc == 2
    assert_one_line(lines, "synth", f"{read_only_dir} is not writable")


def test_batch_checks_every_output_first(tmp_path, capsys, no_model_load):
    """Case 4/7: an unusable output on line 3 of a batch is found before line 1 is synthesised."""
    ref = write_voice(tmp_path / "ref.wav")
    (tmp_path / "taken").mkdir()
    one = tmp_path / "one.wav"
    before = earlier_output(one)
    batch = tmp_path / "items.jsonl"
    batch.write_text("\n".join(json.dumps(x) for x in [
        {"text": TEXT, "ref": ref.name, "out": "one.wav"},
        {"text": TEXT, "ref": ref.name, "out": "two.wav"},
        {"text": TEXT, "ref": ref.name, "out": "taken"},
    ]) + "\n")
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--batch", batch)
    assert rc == 2
    assert_one_line(lines, "synth", f"{batch}:3:", "it is a folder")
    assert one.read_bytes() == before and not (tmp_path / "two.wav").exists()


# -------------------------------------------------------------------- 5. the page's error messages


@pytest.mark.parametrize("seed", [2**70, -1, 1.5, float("nan"), "7"])
def test_page_refuses_seeds_out_of_range(seed, tmp_path):
    """Case 5: a huge seed showed a raw overflow message; now a clear range message before any work."""
    with pytest.raises(UserError, match=r"seed must be an integer from 0 to 9223372036854775807"):
        synthesize_pair(NoSynthesis(), None, TEXT, str(write_voice(tmp_path / "ref.wav")), seed)


def test_cli_and_batch_refuse_seeds_out_of_range(tmp_path, capsys, no_model_load):
    """Case 5: the same range check for `synth --seed` and a batch line's seed (named by its line)."""
    ref = write_voice(tmp_path / "ref.wav")
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", ref, "--text", TEXT,
                    "--out", tmp_path / "o.wav", "--seed", 2**64)
    assert rc == 2
    assert_one_line(lines, "synth", "seed must be an integer from 0 to")
    batch = tmp_path / "items.jsonl"
    batch.write_text(json.dumps({"text": TEXT, "ref": "ref.wav", "out": "o.wav", "seed": 2**70}) + "\n")
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--batch", batch)
    assert rc == 2
    assert_one_line(lines, "synth", f"{batch}:1:", "seed must be an integer")


@pytest.mark.parametrize("content", [b"RIFF\x24\x00\x00\x00WAVEjunk" * 20, "nan", "silence"])
def test_page_errors_do_not_show_server_paths(content, tts, tmp_path):
    """Case 5: the page showed the server's temp paths in errors; a corrupt, NaN or silent upload is
    reported without any path."""
    folder = tmp_path / "server-secret-cache"
    folder.mkdir()
    if isinstance(content, bytes):
        path = folder / "upload.wav"
        path.write_bytes(content)
    else:
        path = write_voice(folder / "upload.wav", samples=_bad_samples("nan" if content == "nan" else "zeros"),
                           subtype="FLOAT")
    with pytest.raises(UserError) as e:
        synthesize_pair(tts, None, TEXT, str(path), 0)
    message = str(e.value)
    assert "server-secret-cache" not in message and str(tmp_path) not in message and "0x" not in message
    assert "\n" not in message


def test_page_hides_unexpected_errors(monkeypatch, tmp_path):
    """Case 5: an unexpected exception (with a server path in it) reaches the page as a generic message."""
    gr = pytest.importorskip("gradio")
    from tagtune.webui import build_demo

    class Broken(NoSynthesis):
        def synthesize(self, *args, **kwargs):
            raise RuntimeError(f"Overflow when unpacking long in {tmp_path}/secret.py")

    demo = build_demo(Broken())
    run = next(f.fn for f in demo.fns.values() if getattr(f, "name", "") == "synthesize")
    with pytest.raises(gr.Error) as e:  # reference, text, the generation settings, tokens per sentence, seed
        run(str(write_voice(tmp_path / "ref.wav")), TEXT, True, 30, 0.8, 1.0, 3, 10.0, 600, 1.0, 0.0, 120, 0)
    assert str(tmp_path) not in e.value.message and "Overflow" not in e.value.message
    assert "server log" in e.value.message


# ---------------------------------------------------------------------- 6. a garbage tags file


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2, 3]", b'{"format": "other"}',
                                     b'{"format": "tagtune-tags", "version": 1, "tags": [{"piece": 3}]}'])
def test_garbage_tags_file_is_one_line_naming_it(garbage, tmp_path, capsys):
    """Case 6: a garbage tags.json did not name the file; through `synth` (loaders.load_model) it is one
    line naming the file, and the earlier output is untouched."""
    model = model_copy(tmp_path / "model", **{"tags.json": garbage})
    out = tmp_path / "out.wav"
    before = earlier_output(out)
    rc, lines = cli(capsys, "synth", "--model", model, "--ref", write_voice(tmp_path / "ref.wav"),
                    "--text", TEXT, "--out", out)
    assert rc == 2
    assert_one_line(lines, "synth", str(model / "tags.json"))
    assert out.read_bytes() == before


# ------------------------------------------------------------------ 7. batch lines checked up front


@pytest.mark.parametrize("bad, message", [
    ({"text": "Well <giggles> that is funny."}, "unknown tag <giggles>; known tags: <laughs>, <sighs>"),
    ({"text": "\u200b\u200b"}, "nothing to say"),
    ({"text": "Hi. " * 600}, "2400 characters; the limit is 2000"),
    ({"text": "   "}, "the text is empty"),
    ({"ref": "missing.wav"}, "missing.wav: not found"),
])
def test_batch_text_and_reference_errors_name_the_line_before_any_synthesis(bad, message, tagged_model, tmp_path,
                                                                            capsys, no_networks):
    """Case 7: unknown tags, empty-after-normalisation and over-long texts (and a missing reference) on
    line 3 are found with the model's tokenizer before the networks load, naming file:line."""
    ref = write_voice(tmp_path / "ref.wav")
    one = tmp_path / "one.wav"
    before = earlier_output(one)
    items = [{"text": "Hello <laughs>.", "ref": ref.name, "out": "one.wav"},
             {"text": TEXT, "ref": ref.name, "out": "two.wav"},
             {"text": TEXT, "ref": ref.name, "out": "three.wav", **bad}]
    batch = tmp_path / "items.jsonl"
    batch.write_text("# a comment\n" + "\n".join(json.dumps(x) for x in items) + "\n")
    rc, lines = cli(capsys, "synth", "--model", tagged_model, "--batch", batch)
    assert rc == 2
    assert_one_line(lines, "synth", f"{batch}:4:", message)
    assert one.read_bytes() == before and not (tmp_path / "two.wav").exists()


def test_run_time_error_names_its_line_and_keeps_earlier_outputs(tts, tmp_path, capsys, monkeypatch):
    """Case 7: an error while synthesising line 2 (its reference deleted after the checks) names the
    line; line 1's wav is complete and the file line 2 would have replaced is untouched."""
    import tagtune.synthesis.jobs as jobs

    monkeypatch.setattr(TTS, "load", classmethod(lambda cls, *a, **k: tts))
    first, second = write_voice(tmp_path / "a.wav"), write_voice(tmp_path / "b.wav", seconds=1.2)
    real_write = jobs.write_wav

    def write_then_lose_the_second_voice(path, audio, rate):
        written = real_write(path, audio, rate)
        second.unlink()  # another process removes it while the batch runs
        return written

    monkeypatch.setattr(jobs, "write_wav", write_then_lose_the_second_voice)
    before = earlier_output(tmp_path / "two.wav")
    batch = tmp_path / "items.jsonl"
    batch.write_text("\n".join(json.dumps({"text": TEXT, "ref": r.name, "out": o, "max_new_tokens": 3,
                                           "num_beams": 1, "do_sample": False})
                               for r, o in ((first, "one.wav"), (second, "two.wav"))) + "\n")
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--batch", batch, "--precision", "fp32")
    assert rc == 2
    assert_one_line(lines, "synth", f"{batch}:2:", "b.wav: not found")
    audio, rate = sf.read(str(tmp_path / "one.wav"), dtype="int16")
    assert rate == RATE and 0 < len(audio) <= 3 * 1024 and len(audio) % 1024 == 0
    assert (tmp_path / "two.wav").read_bytes() == before


# ------------------------------------------------------------------------------- held already


def test_concurrent_synth_to_one_out_leaves_one_complete_wav(tts, tmp_path, monkeypatch):
    """Held: two threads running synth to the same --out (three times each) end with one complete wav,
    equal to one of the two results, and no temporary files."""
    from tagtune.synthesis.jobs import synth_command

    monkeypatch.setattr(TTS, "load", classmethod(lambda cls, *a, **k: tts))
    ref = write_voice(tmp_path / "ref.wav")
    out = tmp_path / "same.wav"
    texts = ["Hello there.", "Goodbye, my friend, and thank you."]
    settings = {"greedy": True, "max_new_tokens": 4, "precision": "fp32"}
    expected = []
    for text in texts:
        synth_command(shipped_base(), ref=ref, text=text, out=out, **settings)
        expected.append(out.read_bytes())
    assert expected[0] != expected[1]
    errors = []

    def worker(text):
        try:
            for _ in range(3):
                synth_command(shipped_base(), ref=ref, text=text, out=out, **settings)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert out.read_bytes() in expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.wav", "same.wav"]


def test_malicious_pickle_vocoder_is_refused(tmp_path, capsys):
    """Held: a pickle that would run code as bigvgan_generator.pth is refused with exit 2, one line, and
    its code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"generator": Payload()}, protocol=2)
    model = model_copy(tmp_path / "model", **{"bigvgan_generator.pth": payload})
    rc, lines = cli(capsys, "synth", "--model", model, "--ref", write_voice(tmp_path / "ref.wav"), "--text", TEXT,
                    "--out", tmp_path / "out.wav")
    assert rc == 2
    assert_one_line(lines, "synth", "bigvgan_generator.pth", "refused")
    assert not marker.exists() and not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("args, message", [
    (["--ref", "{tmp}/nope.wav", "--text", TEXT], "reference audio {tmp}/nope.wav: not found"),
    (["--ref", "{ref}", "--text", "<giggles> Hello there."], "unknown tag <giggles>; known tags: <laughs>, <sighs>"),
    (["--ref", "{ref}", "--text", "   "], "the text is empty"),
    (["--ref", "{ref}", "--text", ""], "the text is empty"),
])
def test_simple_mistakes_are_one_line(args, message, tagged_model, tmp_path, capsys, no_networks):
    """Held: a missing reference file, an unknown tag in --text (listing the known tags) and empty text
    are each one line with exit 2."""
    ref = write_voice(tmp_path / "ref.wav")
    out = tmp_path / "out.wav"
    before = earlier_output(out)
    fill = {"tmp": str(tmp_path), "ref": str(ref)}
    rc, lines = cli(capsys, "synth", "--model", tagged_model, "--out", out, *[a.format(**fill) for a in args])
    assert rc == 2
    assert_one_line(lines, "synth", message.format(**fill))
    assert out.read_bytes() == before


def test_audio_errors_are_single_lines_without_object_reprs():
    """Case 1/5: undecodable bytes give one line in libsndfile's own words, no BytesIO address."""
    with pytest.raises(AudioError) as e:
        load_audio(b"RIFF\x24\x00\x00\x00WAVEjunk" * 20)
    assert "cannot decode" in str(e.value) and "0x" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key, bad, worse, message", [
    ("tag_guidance", 0.5, 11, "tag_guidance must be in [1, 10]"),
    ("anchor_share", 1.5, -0.5, "anchor_share must be in [0, 1]"),
])
def test_decoding_setting_out_of_range_is_one_line(tmp_path, capsys, no_model_load, key, bad, worse, message):
    """`synth`, a batch line, `eval` and `demo` given a tag guidance outside 1..10 or an anchor share outside 0..1:
    one line naming the range, before any model loads or anything is written."""
    flag = "--" + key.replace("_", "-")
    ref = write_voice(tmp_path / "ref.wav")
    out = tmp_path / "o.wav"
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--ref", ref, "--text", TEXT, "--out", out, flag, bad)
    assert rc == 2 and not out.exists()
    assert_one_line(lines, "synth", message)
    batch = tmp_path / "items.jsonl"
    batch.write_text(json.dumps({"text": TEXT, "ref": "ref.wav", "out": "o.wav", key: "strong"}) + "\n")
    rc, lines = cli(capsys, "synth", "--model", shipped_base(), "--batch", batch)
    assert rc == 2
    assert_one_line(lines, "synth", f"{batch}:1:", key)
    rc, lines = cli(capsys, "eval", "--model", shipped_base(), "--data", tmp_path, "--out", tmp_path / "report",
                    flag, worse)
    assert rc == 2 and not (tmp_path / "report").exists()
    assert_one_line(lines, "eval", message)
    rc, lines = cli(capsys, "demo", "--out", tmp_path / "demo", flag, bad)
    assert rc == 2 and not (tmp_path / "demo").exists()
    assert_one_line(lines, "demo", f"{flag}: {message}")
