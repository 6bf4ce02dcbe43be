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
                        "--max-steps", 6, "--batch-size", 4, "--set", "lora.rank=2", "--set", "optim.lr=2e-3")
    assert code == 0 and "trained 6 steps" in out
    recipe = yaml.safe_load((run / "train_config.yaml").read_text())  # the run records the recipe it used
    assert (recipe["lora"]["rank"], recipe["optim"]["lr"], recipe["batch"]["batch_size"]) == (2, 2e-3, 4)

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
    # the terminal gets plain text: tags as typed, no HTML entities or markdown markup
    assert "<giggles>" in out and "&lt;" not in out and "**" not in out and "`" not in out
    assert f"Acceptance: {report['acceptance']['verdict']}" in out


def test_user_errors_exit_2_with_one_line(work, capsys, tmp_path):
    code, _, err = _run(capsys, "prepare", "--model", tmp_path / "missing", "--data", work / "corpus",
                        "--out", tmp_path / "d")
    assert code == 2 and "error:" in err and "missing" in err and "Traceback" not in err
    code, _, err = _run(capsys, "synth", "--model", shipped_base(), "--ref", tmp_path / "none.wav", "--text", "hi",
                        "--out", tmp_path / "o.wav")
    assert code == 2 and "none.wav" in err
    code, _, err = _run(capsys, "tags", "scan", "--data", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err


def _options(parser) -> dict[str, list]:
    """Every command's option actions (``tags scan`` named as such), the parser's own under ""."""
    import argparse

    found, todo = {}, [("", parser)]
    while todo:
        name, p = todo.pop()
        found[name] = [a for a in p._actions if a.option_strings]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}".strip(), child) for sub, child in action.choices.items()]
    return found


def test_every_flag_has_help_and_its_default_shown(capsys):
    from tagtune.cli import build_parser

    options = _options(build_parser())
    assert {"train", "synth", "prepare", "eval", "webui", "demo", "export", "tags scan", "tags add"} <= set(options)
    for command, actions in options.items():
        for action in actions:
            if action.dest in ("help", "version"):
                continue
            assert action.help, f"{command} {action.option_strings[0]} has no help text"
    for command in ("synth", "train", "prepare", "eval", "export"):
        with pytest.raises(SystemExit) as done:
            main([*command.split(), "--help"])
        assert done.value.code == 0
        shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for action in options[command]:
            if action.dest == "help" or action.nargs == 0 or action.required:
                continue  # switches are off unless given; required flags have no default
            assert "default" in action.help or "(default: " in shown.split(action.option_strings[-1], 1)[1], (
                command, action.option_strings)
    # the same device rule for every command that runs a model
    for command in ("synth", "eval", "webui", "prepare"):
        assert next(a for a in options[command] if a.dest == "device").default == "auto"


def test_help_shows_the_values_a_user_gets(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE device for synthesis: auto (the best available" in text and "(default: auto)" in text
    assert "--top-k TOP_K top-k sampling (default: the official 30)" in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "(default: fp32)" in " ".join(capsys.readouterr().out.split())


def test_version_is_the_installed_one(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"tagtune {version('tagtune')}"


@pytest.mark.parametrize("argv", [["-v", "--no-progress", "tags", "scan", "--data", "x"],
                                  ["tags", "-v", "scan", "--data", "x", "--no-progress"],
                                  ["tags", "scan", "--data", "x", "-v", "--no-progress"]])
def test_common_options_before_or_after_the_command(argv):
    from tagtune.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.verbose is True and args.no_progress is True and args.data == "x"
    quiet = build_parser().parse_args(["tags", "scan", "--data", "x"])
    assert quiet.verbose is False and quiet.no_progress is False


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"tagtune {command}: error: "), err
    return lines[0]


def test_train_on_a_missing_data_folder_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--data", tmp_path / "nonexistent", "--out", tmp_path / "run")
    assert code == 2 and "nonexistent" in _one_line_error(err, "train")
    assert not (tmp_path / "run").exists()


def test_a_device_this_torch_lacks_is_one_line(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only build, whatever this one is
    ref = tmp_path / "ref.wav"
    code, _, err = _run(capsys, "synth", "--model", shipped_base(), "--device", "cuda", "--text", "hi",
                        "--ref", ref, "--out", tmp_path / "o.wav")
    assert code == 2 and "device 'cuda'" in _one_line_error(err, "synth")
    code, _, err = _run(capsys, "eval", "--model", shipped_base(), "--data", tmp_path, "--out", tmp_path / "r",
                        "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in _one_line_error(err, "eval")


@pytest.mark.parametrize("argv", [
    ["selftest", "--fixture", "{missing}"],
    ["tags", "scan", "--data", "{missing}"],
    ["tags", "add", "--model", "{missing}", "--tags", "<laughs>", "--out", "{tmp}/model"],
    ["prepare", "--model", "{missing}", "--data", "{missing}", "--out", "{tmp}/data"],
    ["train", "--data", "{missing}", "--out", "{tmp}/run"],
    ["export", "--run", "{missing}", "--out", "{tmp}/model"],
    ["synth", "--model", "{missing}", "--text", "hi", "--ref", "{missing}", "--out", "{tmp}/o.wav"],
    ["synth", "--model", "{base}", "--batch", "{missing}"],
    ["webui", "--model", "{missing}"],
    ["eval", "--model", "{missing}", "--data", "{missing}", "--out", "{tmp}/report"],
    ["demo", "--out", "{file}/demo", "--quick"],
], ids=lambda argv: " ".join(argv[:2]))
def test_a_bad_path_is_one_line_and_exit_2_for_every_command(argv, capsys, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    names = {"missing": tmp_path / "missing-thing", "tmp": tmp_path, "base": shipped_base(), "file": tmp_path / "file"}
    code, _, err = _run(capsys, *[a.format(**names) for a in argv])
    command = " ".join(argv[:2]) if argv[0] == "tags" else argv[0]
    line = _one_line_error(err, command)
    assert code == 2 and ("missing-thing" in line or "file" in line)


def test_set_overrides_any_recipe_key(capsys, tmp_path, monkeypatch):
    import importlib

    training = importlib.import_module("tagtune.train")  # the package (tagtune.train is also the function)
    seen = {}

    def record(data, out, cfg, resume=False, on_validate=None):
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # the recipe is what this test is about, not the run

    monkeypatch.setattr(training, "train", record)
    code, _, _ = _run(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", "--set", "optim.lr=3e-4",
                      "--set", "lora.layers=[0, 1]", "--set", "eval.sample_sentences=[Hi <laughs> there.]",
                      "--set", "seed=7", "--rank", 2, "--set", "lora.rank=8", "--no-progress")
    cfg = seen["cfg"]
    assert code == 130 and cfg.optim.lr == 3e-4 and cfg.lora.layers == [0, 1] and cfg.seed == 7
    assert cfg.eval.sample_sentences == ["Hi <laughs> there."]
    assert cfg.lora.rank == 2 and cfg.runtime.progress_bar is False  # a flag wins over --set



def test_tag_contrast_flags(capsys, tmp_path, monkeypatch):
    import importlib

    training = importlib.import_module("tagtune.train")
    seen = {}

    def record(data, out, cfg, resume=False, on_validate=None):
        seen["cfg"] = cfg
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", record)
    code, _, _ = _run(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", "--tag-contrast", 0.2)
    assert code == 130 and seen["cfg"].loss.tag_contrast == 0.2 and seen["cfg"].loss.contrast_margin == 3.0
    code, _, err = _run(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", "--tag-contrast", -1)
    assert code == 2 and "loss.tag_contrast must be >= 0" in _one_line_error(err, "train")
    code, _, err = _run(capsys, "demo", "--out", tmp_path / "demo", "--tag-contrast", -1)  # before any stage runs
    assert code == 2 and "loss.tag_contrast must be >= 0" in _one_line_error(err, "demo")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("setting, message", [
    ("optim.lrr=1", "unknown recipe key 'optim.lrr'; known in optim: betas, eps, grad_clip, lr,"),
    ("optimizer.lr=1", "unknown recipe key 'optimizer.lr': the recipe has no section 'optimizer'"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1 (set by --set optim.lr=-1)"),
    ("lora.rank=four", "lora.rank must be an integer, got 'four'"),
    ("lora.rank", "expected KEY=VALUE"),
])
def test_set_names_the_bad_key(setting, message, capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", "--set", setting)
    assert code == 2 and message in _one_line_error(err, "train")


def test_prepare_set_is_checked_against_its_settings(capsys, tmp_path):
    code, _, err = _run(capsys, "prepare", "--model", shipped_base(), "--data", tmp_path, "--out", tmp_path / "d",
                        "--set", "val_fractoin=0.1")
    line = _one_line_error(err, "prepare")
    assert code == 2 and "unknown preparation setting 'val_fractoin'" in line and "val_fraction" in line
    code, _, err = _run(capsys, "prepare", "--model", shipped_base(), "--data", tmp_path, "--out", tmp_path / "d",
                        "--set", "max_text_tokens=10")
    assert code == 2 and "unknown preparation setting 'max_text_tokens'" in _one_line_error(err, "prepare")


def test_python_warnings_become_one_log_line(capsys):
    import warnings

    from tagtune.cli import console_logging

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with console_logging(verbose=False):
            warnings.warn("the reference is very quiet", UserWarning, stacklevel=1)
            line = __import__("inspect").currentframe().f_lineno - 1
    err = capsys.readouterr().err
    assert err == f"WARNING UserWarning: the reference is very quiet (test_cli.py:{line})\n"
    with warnings.catch_warnings(record=True) as caught:  # outside a command, warnings are Python's again
        warnings.simplefilter("always")
        warnings.warn("plain", UserWarning, stacklevel=1)
    assert len(caught) == 1 and capsys.readouterr().err == ""
