"""``tagtune demo --model-family v2`` end to end at CI size on the shipped tiny IndexTTS-2 base: every stage
runs, the samples are the reference example's lines in two unseen voices, the report carries the acceptance checks
(a smoke run: not judged) and no transfer section, and the summary says v2.
"""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from tagtune.demo import DEMO_TAGS, SAMPLE_SENTENCES, DemoSettings, format_summary, run_demo
from tagtune.evaluate.report import NOT_JUDGED, NOT_MEASURED
from tagtune.folders import SAMPLE_INDEX_FILE, shipped_base_v2

V2_SAMPLE_RATE = 22_050
SEED = 5
STAGES = ["corpus", "prepare", "train", "export", "synthesise", "evaluate"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-v2")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return out, run_demo(out, DemoSettings.quick(seed=SEED, model_family="v2"), progress=False)
    finally:
        torch.set_num_threads(threads)  # the tests after this one run on one thread (conftest)


@pytest.mark.slow
def test_every_stage_ran_on_the_v2_base(demo):
    out, summary = demo
    assert list(summary["timings_s"]) == STAGES and all(v >= 0 for v in summary["timings_s"].values())
    written = json.loads((out / "summary.json").read_text())
    assert written["model_family"] == summary["model_family"] == "v2" == written["settings"]["model_family"]
    assert written["base"] == str(shipped_base_v2())
    assert sorted(p.name for p in out.iterdir()) == ["corpus", "data", "model", "reference-corpus", "report", "run",
                                                     "samples", "summary.json"]  # no transfer set, no replay


@pytest.mark.slow
def test_corpora_and_prepared_data(demo):
    from tagtune.synthetic.voices import HELD_OUT, PRETRAIN, VOICES

    out, summary = demo
    corpora = summary["corpora"]
    assert corpora["fine-tune"]["clips"] == DemoSettings.quick().clips and corpora["fine-tune"]["languages"] == {
        "en": DemoSettings.quick().clips}
    assert {VOICES[v].role for v in corpora["fine-tune"]["speakers"]} == {PRETRAIN}
    assert {VOICES[v].role for v in corpora["reference"]["speakers"]} == {HELD_OUT}
    assert corpora["reference"]["tags"] == {}
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["model_family"] == "v2" and manifest["counts"] == summary["data"]
    assert manifest["counts"]["accepted"] == manifest["counts"]["train"] + manifest["counts"]["val"] >= 32
    assert sorted(manifest["tag_ids"]) == sorted(f"<{t}>" for t in DEMO_TAGS)


@pytest.mark.slow
def test_run_without_replay_and_the_exported_v2_model(demo):
    from tagtune.loaders import LoadedModelV2, load_model

    out, summary = demo
    assert summary["train"]["steps"] == DemoSettings.quick().steps
    assert summary["train_config"] == {"tag_init": "neutral", "max_steps": DemoSettings.quick().steps,
                                       "replay_fraction": None, "tag_contrast": 0.05}
    assert "tag_contrast: 0.05" in (out / "run" / "train_config.yaml").read_text()
    model = load_model(out / "model")
    assert isinstance(model, LoadedModelV2)
    ids = {t["tag"]: t["id"] for t in json.loads((out / "model" / "tags.json").read_text())["tags"]}
    assert sorted(ids) == sorted(f"<{t}>" for t in DEMO_TAGS)
    assert ids["<sighs>"] in model.tokenizer.encode("Well <sighs> fine")


@pytest.mark.slow
def test_samples_in_two_unseen_voices(demo):
    from tagtune.synthetic.voices import HELD_OUT, VOICES

    out, summary = demo
    assert len(summary["samples"]) == 2 * 2 * len(SAMPLE_SENTENCES)
    index = json.loads((out / "samples" / SAMPLE_INDEX_FILE).read_text())
    assert sorted(p.name for p in (out / "samples").glob("*.wav")) == sorted(e["file"] for e in index)
    assert {(e["model"], e["text"]) for e in index} == {(m, t) for m in ("tuned", "base") for t in SAMPLE_SENTENCES}
    assert all(e["reference"].startswith("reference-corpus/") for e in index)
    voices = {e["voice"].split(" (")[1].rstrip(")") for e in index}
    assert {VOICES[v].role for v in voices} == {HELD_OUT} and {VOICES[v].gender for v in voices} == {"f", "m"}
    for path in summary["samples"]:
        audio, rate = sf.read(path)
        assert rate == V2_SAMPLE_RATE and audio.ndim == 1 and len(audio) > 0 and 0 < abs(audio).max() <= 1.0


@pytest.mark.slow
def test_report_has_the_acceptance_checks_unjudged(demo):
    out, summary = demo
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["acceptance"] == summary["acceptance"]
    assert not report.get("transfer")  # eval refuses a transfer set for IndexTTS-2
    checks = report["acceptance"]["checks"]
    assert {f"<{t}> reliance_gap tuned >= 1.0" for t in DEMO_TAGS} <= {c["name"] for c in checks}
    assert "untagged_nll_ratio <= 1.05" in {c["name"] for c in checks}
    assert report["meta"]["smoke"] is True and report["acceptance"]["passed"] is False
    assert {c["verdict"] for c in checks} <= {NOT_JUDGED, NOT_MEASURED}
    table = format_summary(summary)
    assert "SMOKE RUN" in table and all(c["name"] in table for c in checks)
    # decoded anchored to the base with the tuned model's own tag-free scores as the start of tagged prompts
    free = report["meta"]["free_running"]
    assert (free["tag_guidance"], free["base_anchor"], free["anchor_share"]) == (3.0, True, 1.0)
    assert "anchored to the base, anchor share 1" in table


def test_settings_per_family():
    assert DemoSettings.full() == DemoSettings() and DemoSettings.quick().model_family == "v1"
    v2 = DemoSettings.full(seed=3, model_family="v2")
    assert (v2.model_family, v2.clips, v2.steps, v2.free_prompts, v2.seed) == ("v2", 1600, 800, 64, 3)
    quick = DemoSettings.quick(seed=3, model_family="v2")
    assert (quick.model_family, quick.smoke, quick.steps) == ("v2", True, 20)
    with pytest.raises(ValueError, match="model_family"):
        DemoSettings(model_family="v3")
    # each family's tag guidance, in the full and the quick demo alike, unless given
    assert (DemoSettings.full().tag_guidance, v2.tag_guidance, quick.tag_guidance) == (3.0, 3.0, 3.0)
    assert (DemoSettings.full().base_anchor, v2.base_anchor, quick.base_anchor) == (True, True, True)
    assert (DemoSettings.full().anchor_share, DemoSettings.quick().anchor_share, v2.anchor_share) == (0.5, 0.5, 1.0)
    assert DemoSettings(anchor_share=0.0).anchor_share == 0.0
    # training's tag-contrast term: IndexTTS-2's demo trains with it, 1.x's without, unless given
    assert (DemoSettings.full().tag_contrast, v2.tag_contrast, quick.tag_contrast) == (0.0, 0.05, 0.05)
    assert DemoSettings(model_family="v2", tag_contrast=0.0).tag_contrast == 0.0
    assert DemoSettings().decoding_share == 0.5 and DemoSettings(base_anchor=False).decoding_share == 0.0
    assert DemoSettings(tag_guidance=1.0).tag_guidance == 1.0


def test_recipe_per_family(tmp_path):
    """1.x: replay with spliced events, event cuts and the conditioning path trained; IndexTTS-2: none of them."""
    from tagtune.demo import demo_recipe

    v1 = demo_recipe(tmp_path, DemoSettings.full(seed=4))
    assert (v1.seed, v1.schedule.max_steps, v1.replay.data, v1.replay.fraction) == (4, 800, str(tmp_path / "replay"),
                                                                                    0.5)
    assert (v1.lora.train_conditioning, v1.replay.events, v1.augment.event_cuts) == (True, 0.5, 0.5)
    v2 = demo_recipe(tmp_path, DemoSettings.full(seed=4, model_family="v2"))
    assert (v2.lora.train_conditioning, v2.replay.data, v2.augment.event_cuts, v2.schedule.max_steps) == (
        False, None, 0.0, 800)


def test_cli_parses_the_model_family_and_base(monkeypatch, tmp_path, capsys):
    import tagtune.demo
    from tagtune.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--model-family", "v2", "--base", str(tmp_path)])
    assert (args.model_family, args.base) == ("v2", tmp_path)
    args = build_parser().parse_args(["demo"])
    assert (args.model_family, args.base) == ("v1", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--model-family", "v3"])
    capsys.readouterr()
    seen = {}

    def fake(out, settings, base_dir=None, progress=True):
        seen.update(settings=settings, base_dir=base_dir)
        raise SystemExit(0)

    monkeypatch.setattr(tagtune.demo, "run_demo", fake)
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), "--model-family", "v2", "--quick", "--base", str(tmp_path)])
    assert seen["settings"] == DemoSettings.quick(0, "v2") and seen["base_dir"] == tmp_path
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), "--quick", "--tag-guidance", "2"])
    assert seen["settings"].tag_guidance == 2.0
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), "--quick", "--no-base-anchor"])
    assert seen["settings"].base_anchor is False
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), "--quick", "--anchor-share", "0.25"])
    assert seen["settings"].anchor_share == 0.25
    assert main(["demo", "--out", str(tmp_path / "d"), "--tag-guidance", "0"]) == 2
    assert "tag_guidance must be in [1, 10]" in capsys.readouterr().err


def test_a_missing_base_is_one_line(tmp_path, capsys):
    from tagtune.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--model-family", "v2", "--base",
                 str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such model folder" in err and "--base" in err
