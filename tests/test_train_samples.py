"""Samples while training: ``eval.sample_sentences`` spoken by the GPT being trained at each validation, into
RUN_DIR/samples/step-NNNNNN/ (wavs + index.json), for IndexTTS 1.x and IndexTTS-2 data, through the library
hook (``synthesis.run_samples.TrainingSamples``) and through `tagtune train`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.cli import main
from tagtune.folders import shipped_base, shipped_base_v2
from tagtune.synthesis.run_samples import TrainingSamples, sample_name
from train_fixtures import RUN_CONFIG

SENTENCES = ["Hello world <laughs> that is funny.", "It costs dollars."]
REFERENCE = "clip007.wav"  # a 2 s untagged clip of the tiny corpus
LOSS_KEYS = ("loss", "loss_text", "loss_mel", "loss_tagged", "loss_untagged")


def _recipe(**eval_settings) -> dict:
    recipe = json.loads(json.dumps(RUN_CONFIG))
    recipe["eval"].update(eval_settings)
    return recipe


def _read_samples(folder: Path, sentences: list[str], rate: int) -> list[np.ndarray]:
    """The wavs that ``folder/index.json`` lists, checked against the listing; returns their samples."""
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    assert [e["sentence"] for e in index] == sentences
    assert sorted(p.name for p in folder.glob("*.wav")) == sorted(e["file"] for e in index)
    out = []
    for i, e in enumerate(index, 1):
        assert e["file"].startswith(f"{i:02d}-") and e["file"].endswith(".wav")
        audio, got_rate = sf.read(folder / e["file"], dtype="int16")
        assert got_rate == rate and e["seconds"] == pytest.approx(len(audio) / rate, abs=1e-3)
        out.append(audio)
    return out


@pytest.fixture(scope="module")
def sampled_run(tiny_data, tmp_path_factory):
    """(run_dir, RunResult) of the shared 8-step recipe with two sample sentences, validated at steps 4 and 8."""
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("sampled") / "run"
    hook = TrainingSamples(tiny_data.parent / "corpus" / REFERENCE, seed=11)
    return run_dir, train(tiny_data, run_dir, TrainConfig.from_dict(_recipe(sample_sentences=SENTENCES)),
                          on_validate=hook)


def test_each_validation_writes_the_sentences_as_listed_wavs(sampled_run):
    run_dir, _ = sampled_run
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-000004", "step-000008"]
    for step in ("step-000004", "step-000008"):
        for audio in _read_samples(run_dir / "samples" / step, SENTENCES, 24000):
            assert audio.size > 0 and np.isfinite(audio.astype(np.float32)).all() and np.abs(audio).max() > 0
    assert (run_dir / "samples" / "step-000008" / "01-hello-world-laughs-that-is-funny.wav").is_file()


def test_samples_do_not_change_training(sampled_run, trained_run):
    """Same recipe, same data: the run with samples has the losses and weights of the one without."""
    from safetensors.torch import load_file

    def losses(run_dir: Path) -> list[tuple]:
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r["step"], *(r.get(k) for k in LOSS_KEYS)) for r in rows]

    (with_samples, _), (without, _) = sampled_run, trained_run
    assert losses(with_samples) == losses(without)
    a, b = (load_file(str(run / "best" / "adapter_model.safetensors")) for run in (with_samples, without))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_data):
    """The tiny DATA_DIR as the training loop opens it (what it hands the hook as ``data``)."""
    from tagtune.train.data import open_data

    return open_data(tiny_data)


@pytest.fixture
def grown_gpt(tiny_data):
    from tagtune.tags.rows import grow_base

    gpt, _, _ = grow_base(shipped_base(), ["<laughs>", "<sighs>"])
    return gpt.train()


def _call(hook, gpt, data, samples_dir: Path, step: int = 3, sentences=SENTENCES):
    """``hook`` called as the training loop calls it, with ``data`` the opened DATA_DIR."""
    return hook(gpt=gpt, step=step, samples_dir=samples_dir, sentences=sentences,
                tokenizer_path=data.tokenizer_path, tags_path=data.tags_path, data=data)


def test_samples_are_seeded_and_leave_the_model_and_random_state_as_found(grown_gpt, tiny_data, tiny_bundle,
                                                                          tmp_path):
    hook = TrainingSamples(tiny_data.parent / "corpus" / REFERENCE, seed=5)
    rng = torch.get_rng_state()
    first = _call(hook, grown_gpt, tiny_bundle, tmp_path / "a")
    assert hook.base_dir == tiny_bundle.base_dir == shipped_base()  # the base the data was prepared from
    assert grown_gpt.training and torch.equal(torch.get_rng_state(), rng)
    second = _call(hook, grown_gpt, tiny_bundle, tmp_path / "b")
    assert first == tmp_path / "a" / "step-000003" and second == tmp_path / "b" / "step-000003"
    for x, y in zip(_read_samples(first, SENTENCES, 24000), _read_samples(second, SENTENCES, 24000)):
        assert np.array_equal(x, y)
    assert [e["seed"] for e in json.loads((first / "index.json").read_text())] == [5, 6]
    other = _call(TrainingSamples(tiny_data.parent / "corpus" / REFERENCE, seed=6), grown_gpt, tiny_bundle,
                  tmp_path / "c")
    assert not np.array_equal(_read_samples(other, SENTENCES, 24000)[0], _read_samples(first, SENTENCES, 24000)[0])


@pytest.mark.parametrize("reference, sentences, why", [
    ("missing.wav", SENTENCES, "missing.wav"),
    (REFERENCE, ["Hello <giggles> world."], "<giggles>"),  # a tag the data does not know
])
def test_a_failed_sample_is_one_warning_and_nothing_written(grown_gpt, tiny_data, tiny_bundle, tmp_path, caplog,
                                                            reference, sentences, why):
    hook = TrainingSamples(tiny_data.parent / "corpus" / reference)
    with caplog.at_level(logging.WARNING):
        assert _call(hook, grown_gpt, tiny_bundle, tmp_path / "samples", sentences=sentences) is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "step 3: no samples written" in warnings[0].getMessage()
    assert why in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert not (tmp_path / "samples").exists() and grown_gpt.training


def test_no_sentences_no_samples(grown_gpt, tiny_data, tiny_bundle, tmp_path):
    hook = TrainingSamples(tiny_data.parent / "corpus" / REFERENCE)
    assert _call(hook, grown_gpt, tiny_bundle, tmp_path / "samples", sentences=[]) is None
    assert not (tmp_path / "samples").exists()


def test_samples_need_a_voice():
    with pytest.raises(ValueError, match="reference"):
        TrainingSamples(seed=1)


@pytest.mark.parametrize("number, text, name", [
    (1, "Hello world <laughs> that is funny.", "01-hello-world-laughs-that-is-funny.wav"),
    (12, "<sighs>", "12-sighs.wav"),
    (3, "?!", "03-sample.wav"),
    (4, "a " * 40, "04-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a.wav"),
])
def test_sample_names(number, text, name):
    assert sample_name(number, text) == name


# ------------------------------------------------------------------------------------------------- tagtune train


def _train_cli(capsys, data: Path, out: Path, *settings: str) -> tuple[int, str]:
    argv = ["train", "--data", data, "--out", out, "--max-steps", "4", "--batch-size", "4", "--seed", "11",
            "--no-progress", "--report-to", "none", "--set", "batch.grad_accum=1", "--set", "eval.every_steps=2",
            "--set", "lora.rank=4", "--set", "schedule.warmup_steps=1", *settings]
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_train_speaks_sample_sentences_in_a_validation_voice(tiny_data, tmp_path, capsys):
    code, err = _train_cli(capsys, tiny_data, tmp_path / "run",
                           "--set", 'eval.sample_sentences=["Hello <sighs> world.", "This is well."]')
    assert code == 0, err
    for step in ("step-000002", "step-000004"):
        for audio in _read_samples(tmp_path / "run" / "samples" / step, ["Hello <sighs> world.", "This is well."],
                                   24000):
            assert audio.size > 0


def test_cli_train_with_a_bad_reference_warns_and_trains(tiny_data, tmp_path, capsys):
    code, err = _train_cli(capsys, tiny_data, tmp_path / "run", "--set", "eval.sample_sentences=[Hello world.]",
                           "--set", f"eval.sample_reference={tmp_path / 'nowhere.wav'}")
    assert code == 0, err
    assert err.count("no samples written") == 2 and "nowhere.wav" in err  # one line per validation
    assert not (tmp_path / "run" / "samples").exists() and (tmp_path / "run" / "best").is_dir()


def test_cli_train_with_sample_sentences_opens_the_data_once(tiny_data, tmp_path, capsys, monkeypatch):
    """The base checkpoint is fingerprinted once per run: the sample hook takes the base folder and the voice from
    the data the training loop opened."""
    import tagtune.checkpoint

    fingerprint, hashed = tagtune.checkpoint.folder_fingerprint, []

    def counted(model_dir, *args, **kwargs):
        hashed.append(Path(model_dir))
        return fingerprint(model_dir, *args, **kwargs)

    monkeypatch.setattr(tagtune.checkpoint, "folder_fingerprint", counted)
    code, err = _train_cli(capsys, tiny_data, tmp_path / "run", "--max-steps", "2",
                           "--set", "eval.sample_sentences=[Hello world.]")
    assert code == 0, err
    assert len(_read_samples(tmp_path / "run" / "samples" / "step-000002", ["Hello world."], 24000)) == 1
    assert len(hashed) == 1 and hashed[0].resolve() == shipped_base().resolve()


def test_sample_voice_from_a_corpus_that_is_gone_is_a_warning_at_the_first_validation(tiny_data, tiny_bundle,
                                                                                      grown_gpt, tmp_path, caplog):
    from tagtune.cli import _sample_hook
    from tagtune.train.config import TrainConfig
    from tagtune.train.data import open_data

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["source"]["name"] = str(tmp_path / "moved" / "list.jsonl")
    (data / "manifest.json").write_text(json.dumps(manifest))
    cfg = TrainConfig.from_dict(_recipe(sample_sentences=SENTENCES))
    with caplog.at_level(logging.WARNING):
        hook = _sample_hook(cfg)
        assert hook is not None and hook.reference is None and not caplog.records  # nothing is read at start-up
        moved = open_data(data)
        assert _call(hook, grown_gpt, moved, tmp_path / "samples", step=2) is None
        assert len(caplog.records) == 1
        assert _call(hook, grown_gpt, moved, tmp_path / "samples", step=4) is None
    assert len(caplog.records) == 1  # said once, at the first validation; later ones speak nothing
    assert "eval.sample_reference" in caplog.text and "moved" in caplog.text
    assert not (tmp_path / "samples").exists() and grown_gpt.training
    hook = _sample_hook(cfg)
    assert hook.resolve(tiny_bundle) and hook.reference == str(tiny_data.parent / "corpus" / REFERENCE)
    assert _sample_hook(TrainConfig.from_dict(_recipe())) is None


# ----------------------------------------------------------------------------------------------------- IndexTTS-2


@pytest.fixture(scope="module")
def v2_data(tmp_path_factory) -> Path:
    from tagtune.data.for_model import prepare_for_model
    from test_v2_prepare import _corpus

    root = tmp_path_factory.mktemp("v2samples")
    prepare_for_model(shipped_base_v2(), str(_corpus(root / "corpus")), root / "data", device="cpu",
                      progress=False, shard_size=4, val_fraction=0.25, seed=1)
    return root / "data"


def test_v2_training_speaks_sample_sentences(v2_data, tmp_path):
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    sentences = ["HELLO <giggles> WORLD.", "WORLD WELL."]
    recipe = _recipe(sample_sentences=sentences, every_steps=2)
    recipe["batch"]["batch_size"], recipe["schedule"]["max_steps"], recipe["optim"]["lr"] = 2, 4, 1e-3
    hook = TrainingSamples(v2_data.parent / "corpus" / "c5.wav", seed=3)
    train(v2_data, tmp_path / "run", TrainConfig.from_dict(recipe), on_validate=hook)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-000002", "step-000004"]
    for step in ("step-000002", "step-000004"):
        audio = _read_samples(tmp_path / "run" / "samples" / step, sentences, 22050)
        assert audio[0].size > 0 and np.abs(audio[0]).max() > 0
