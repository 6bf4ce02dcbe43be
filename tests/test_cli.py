"""The commands a user types, end to end on the shipped tiny base model (no ../shared needed)."""

from __future__ import annotations

import json
import wave

import pytest
import yaml

from tagtune.cli import main
from tagtune.folders import shipped_base, shipped_recipe
from tagtune.loaders import load_model
from tagtune.synthetic import generate_corpus

TAGS = ["<giggles>", "<laughs>", "<sighs>"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    generate_corpus(root / "corpus", n_clips=48, seed=5, engine="builtin", untagged_fraction=0.5)
    recipe = yaml.safe_load(shipped_recipe("demo.yaml").read_text())
    recipe["eval"]["every_steps"] = 3
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tags_scan_reports_canonical_counts(work, capsys):
    code, out, _ = _run(capsys, "tags", "scan", "--data", work / "corpus", "--json")
    assert code == 0
    scan = json.loads(out)
    assert sorted(scan["canonical"]) == TAGS
    assert scan["texts"] == 48 and scan["texts_with_tags"] == 24  # untagged_fraction 0.5
    assert sum(scan["canonical"].values()) == sum(scan["raw"].values()) > 0


def test_prepare_train_export_synth_eval(work, capsys):
    base, data, run, model = shipped_base(), work / "data", work / "run", work / "model"
    code, out, _ = _run(capsys, "prepare", "--model", base, "--data", work / "corpus", "--out", data,
                        "--val-fraction", "0.25", "--no-progress")
    assert code == 0 and "prepared 48 of 48 clips" in out
    manifest = json.loads((data / "manifest.json").read_text())
    assert sorted(manifest["tag_ids"]) == TAGS and manifest["base_checkpoint"]["dir"] == str(base.resolve())

    code, out, _ = _run(capsys, "train", "--data", data, "--out", run, "--config", work / "recipe.yaml",
                        "--max-steps", 6, "--batch-size", 4)
    assert code == 0 and "trained 6 steps" in out

    code, out, _ = _run(capsys, "export", "--run", run, "--out", model)
    assert code == 0
    m = load_model(model)
    assert m.config.gpt.number_text_tokens == load_model(base).config.gpt.number_text_tokens + 3
    assert sorted(m.tokenizer.tag_ids) == TAGS

    ref = sorted((work / "corpus" / "wavs").glob("*.wav"))[0]
    wav = work / "giggle.wav"
    code, out, _ = _run(capsys, "synth", "--model", model, "--ref", ref, "--text", "Oh really? <giggles> fine.",
                        "--out", wav, "--seed", 1, "--max-new-tokens", 60)
    assert code == 0 and wav.is_file()
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
        assert w.getnframes() > 0 and w.getnframes() % 1024 == 0

    code, out, _ = _run(capsys, "eval", "--model", model, "--base", base, "--data", data, "--out", work / "report",
                        "--n-free", 4)
    assert code == 0
    report = json.loads((work / "report" / "report.json").read_text())
    assert set(report["tags"]) == set(TAGS) and "untagged_nll_ratio" in report["overall"]


def test_user_errors_exit_2_with_one_line(work, capsys, tmp_path):
    code, _, err = _run(capsys, "prepare", "--model", tmp_path / "missing", "--data", work / "corpus",
                        "--out", tmp_path / "d")
    assert code == 2 and "error:" in err and "missing" in err and "Traceback" not in err
    code, _, err = _run(capsys, "synth", "--model", shipped_base(), "--ref", tmp_path / "none.wav", "--text", "hi",
                        "--out", tmp_path / "o.wav")
    assert code == 2 and "none.wav" in err
    code, _, err = _run(capsys, "tags", "scan", "--data", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err
