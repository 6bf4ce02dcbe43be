"""``tagtune demo`` end to end at CI size (``DemoSettings.quick()``): the files a user gets and the numbers
the summary shows, checked against the data they come from. The quick run is a smoke run, too small to judge
the acceptance checks: the test asserts structure, consistency and that the run says so."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from tagtune.demo import DEMO_TAGS, SAMPLE_SENTENCES, DemoSettings, format_summary, run_demo
from tagtune.evaluate.report import NOT_JUDGED, NOT_MEASURED
from tagtune.folders import SAMPLE_INDEX_FILE

MODEL_SAMPLE_RATE = 24_000
SEED = 5


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return out, run_demo(out, DemoSettings.quick(seed=SEED))
    finally:
        torch.set_num_threads(threads)  # the tests after this one run on one thread (conftest)


@pytest.mark.slow
def test_corpus_and_prepared_data(demo):
    out, summary = demo
    settings = DemoSettings.quick(seed=SEED)
    rows = [json.loads(x) for x in (out / "corpus" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == settings.clips == len(list((out / "corpus" / "wavs").glob("*.wav")))
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["counts"] == summary["data"]
    assert manifest["counts"]["accepted"] == settings.clips == manifest["counts"]["train"] + manifest["counts"]["val"]
    assert manifest["counts"]["val"] == round(settings.clips * settings.val_fraction)
    assert sorted(manifest["tag_ids"]) == sorted(f"<{t}>" for t in DEMO_TAGS)


@pytest.mark.slow
def test_run_and_exported_model(demo):
    from tagtune.loaders import load_model

    out, summary = demo
    assert summary["train"]["steps"] == DemoSettings.quick().steps
    assert (out / "run" / "run.json").is_file() and (out / "run" / "train_config.yaml").is_file()
    assert summary["train_config"]["tag_contrast"] == 0.0  # the 1.x demo trains without the tag-contrast term
    model = load_model(out / "model")
    ids = {t["tag"]: t["id"] for t in json.loads((out / "model" / "tags.json").read_text())["tags"]}
    assert sorted(ids) == sorted(f"<{t}>" for t in DEMO_TAGS)
    vocab = model.gpt.text_embedding.weight.shape[0]
    assert vocab == model.config.gpt.number_text_tokens + 1
    assert sorted(ids.values()) == list(range(vocab - 1 - len(ids), vocab - 1))  # before the spare row
    assert ids["<sighs>"] in model.tokenizer.encode("Well <sighs> fine")  # the exported tokenizer reads tags


@pytest.mark.slow
def test_samples_are_24khz_speech(demo):
    out, summary = demo
    # the reference example's lines, tuned and base, in an unseen female and an unseen male voice
    assert len(summary["samples"]) == 2 * 2 * len(SAMPLE_SENTENCES)
    index = json.loads((out / "samples" / SAMPLE_INDEX_FILE).read_text())
    assert sorted(e["file"] for e in index) == sorted(p.rsplit("/", 1)[1] for p in summary["samples"])
    assert sorted(p.name for p in (out / "samples").glob("*.wav")) == sorted(e["file"] for e in index)
    assert {(e["model"], e["text"]) for e in index} == {(m, t) for m in ("tuned", "base") for t in SAMPLE_SENTENCES}
    from tagtune.synthetic.voices import HELD_OUT, VOICES

    voices = {e["voice"].split(" (")[1].rstrip(")") for e in index}
    assert {VOICES[v].role for v in voices} == {HELD_OUT} and {VOICES[v].gender for v in voices} == {"f", "m"}
    for path in summary["samples"]:
        audio, rate = sf.read(path)
        assert rate == MODEL_SAMPLE_RATE and audio.ndim == 1
        assert 0.2 * MODEL_SAMPLE_RATE < len(audio) < 30 * MODEL_SAMPLE_RATE and 0 < abs(audio).max() <= 1.0


@pytest.mark.slow
def test_report_and_summary_agree(demo):
    out, summary = demo
    report = json.loads((out / "report" / "report.json").read_text())
    assert json.loads((out / "summary.json").read_text())["acceptance"] == report["acceptance"] == summary["acceptance"]
    assert set(report["tags"]) == {f"<{t}>" for t in DEMO_TAGS}
    assert set(report["overall"]) >= {"untagged_nll_ratio", "mean_hit_rate", "false_event_rate",
                                      "detector_false_positive_rate", "detector_generated_negatives"}
    assert {"ft_voice_en", "unseen_en"} <= set(report["transfer"]) and "## Transfer" in \
        (out / "report" / "report.md").read_text()
    val = report["meta"]["validation"]
    assert val["tagged"] + val["untagged"] == summary["data"]["val"]
    # the base is grown with the rows the run recorded before its first step, not rebuilt from a formula
    assert report["meta"]["base_tag_rows"] == "recorded start rows"
    # the summary's numbers are the report's
    nll = report["overall"]["untagged_nll"]
    assert report["overall"]["untagged_nll_ratio"] == pytest.approx(nll["tuned"] / nll["base"])
    rates = [e["hit_rate"] for e in report["tags"].values() if e["hit_rate"] is not None]
    assert report["overall"]["mean_hit_rate"] == pytest.approx(sum(rates) / len(rates))
    assert summary["total_s"] == pytest.approx(sum(summary["timings_s"].values()), abs=0.5)
    checks = report["acceptance"]["checks"]
    # a smoke run: numbers shown, no check judged, never a pass
    assert report["meta"]["smoke"] is True and report["acceptance"]["passed"] is False
    assert {c["verdict"] for c in checks} <= {NOT_JUDGED, NOT_MEASURED}
    table = format_summary(summary)
    assert all(c["name"] in table for c in checks) and f"seed {SEED}" in table
    assert "SMOKE RUN" in table and "smoke run" in table.splitlines()[-1]
    # the free-running checks decoded with the demo's tag guidance, anchored to the base, and the summary says so
    assert report["meta"]["free_running"]["tag_guidance"] == summary["settings"]["tag_guidance"] == 3.0
    assert report["meta"]["free_running"]["base_anchor"] is summary["settings"]["base_anchor"] is True
    assert report["meta"]["free_running"]["anchor_share"] == summary["settings"]["anchor_share"] == 0.5
    assert "tag guidance 3 anchored to the base, anchor share 0.5" in table
    md = (out / "report" / "report.md").read_text()
    assert "smoke run" in md.splitlines()[0] and all(f"../samples/{p.rsplit('/', 1)[1]}" in md
                                                     for p in summary["samples"])


@pytest.mark.parametrize("judged,passed,rc", [(True, True, 0), (True, False, 1), (False, False, 0)])
def test_demo_exit_status_follows_a_judged_acceptance(demo, monkeypatch, capsys, judged, passed, rc):
    import tagtune.demo
    from tagtune.cli import main

    out, summary = demo
    acceptance = {**summary["acceptance"], "judged": judged, "passed": passed,
                  "verdict": "passed" if passed else "not passed"}
    monkeypatch.setattr(tagtune.demo, "run_demo", lambda *a, **k: {**summary, "acceptance": acceptance})
    assert main(["demo", "--out", str(out), "--no-progress"]) == rc
    assert "acceptance check" in capsys.readouterr().out


def test_corpus_stage_shows_progress(tmp_path, monkeypatch):
    import tqdm

    from tagtune.synthetic import generate_corpus

    bars = []

    class Recorder:
        def __init__(self, total, disable, **kwargs):
            self.total, self.disable, self.done = total, disable, 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    generate_corpus(tmp_path / "c", n_clips=5, seed=0, engine="builtin", progress=True, workers=1)
    generate_corpus(tmp_path / "quiet", n_clips=5, seed=0, engine="builtin", progress=False, workers=1)
    assert [(b.total, b.done, b.disable) for b in bars] == [(5, 5, None), (5, 5, True)]
