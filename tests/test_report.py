"""The report a person reads: report.md links that resolve, plain terminal text, smoke runs labelled as such,
readable figures (checked on matplotlib's artists), and sample files named by their sentence with an index."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tagtune.evaluate.report import (
    FAIL,
    MAX_BASE_GAP,
    MIN_RELIANCE_GAP,
    NOT_JUDGED,
    NOT_MEASURED,
    PASS,
    REPORT_MD,
    attach_samples,
    build_report,
    write_report,
)
from tagtune.evaluate.report_md import render_markdown, render_text

TAGS = ["<giggles>", "<laughs>", "<sighs>"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _sections(gap: float = 2.0, hit: float = 0.6, false_rate: float = 0.05, base_free: bool = True) -> dict:
    """Evaluation sections as ``evaluate`` builds them, with chosen numbers; ``<sighs>`` never hit in free running."""
    def rel(g, win):
        return {t: {"trials": 40, "unit": "event", "reliance_gap": g, "reliance_gap_se": 0.1, "wrong_tag_gap": g / 2,
                    "clip_win_rate": win} for t in TAGS}

    def free(h, fr):
        per_tag = {t: {"hit_rate": h, "placement_error_ms": 120.0} for t in TAGS[:2]}
        per_tag["<sighs>"] = {"hit_rate": None, "placement_error_ms": None}
        counts = {r: {c: (9 if r == c else 1) for c in [*TAGS, "none"]} for r in TAGS}
        return {"per_tag": per_tag, "mean_hit_rate": h, "any_event_rate": 0.7, "false_event_rate": fr,
                "placement_error_ms": {"median": 120.0}, "confusion": {"rows": TAGS, "columns": [*TAGS, "none"],
                                                                       "counts": counts}}

    out = {"reliance": {"tuned": rel(gap, 0.95), "base": rel(0.01, 0.5)},
           "forgetting": {"untagged_nll_ratio": 0.99, "untagged_nll": {"tuned": 2.0, "base": 2.02}},
           "detector": {"held_out": {"accuracy": 0.97, "balanced_accuracy": 0.95}, "generated_negatives": 8},
           "free": {"tuned": free(hit, false_rate), "real_clips": free(1.0, 0.0),
                    "detector_on_base": {"sequence_rate": 0.0, "window_rate": 0.01}}}
    if base_free:
        out["free"]["base"] = free(0.0, 0.0)
    return out


def _report(smoke: bool = False, **numbers) -> dict:
    meta = {"model": "runs/model dir", "base": "base", "data": "data", "seed": 0, "tags": TAGS,
            "validation": {"tagged": 30, "untagged": 30}, "seconds": 1.5, "smoke": smoke}
    return build_report(meta, _sections(**numbers))


@pytest.fixture
def written(tmp_path):
    """A report folder with figures, and a samples folder beside it that the report lists."""
    pytest.importorskip("matplotlib")
    samples_dir = tmp_path / "samples"
    samples_dir.mkdir()
    samples = []
    for i, text in enumerate(["Seriously? <giggles> That's | cute!", "Plain words."], start=1):
        name = f"{i:02d}-tuned-sample.wav"
        (samples_dir / name).write_bytes(b"RIFF")
        samples.append({"file": name, "model": "tuned", "voice": "clip 1.wav", "text": text, "seed": i})
    report = _report()
    write_report(report, tmp_path / "report")
    attach_samples(report, tmp_path / "report", samples, samples_dir)
    return tmp_path / "report", report, samples


def test_report_md_links_every_figure_and_sample_and_each_link_resolves(written):
    out, report, samples = written
    md = (out / REPORT_MD).read_text()
    targets = [unquote(t) for t in LINK.findall(md)]
    assert set(report["figures"]) == {"reliance.png", "free_running.png", "confusion.png"}
    assert set(report["figures"]) | {f"../samples/{s['file']}" for s in samples} == set(targets)
    for target in targets:
        assert not Path(target).is_absolute() and (out / target).is_file(), target
    saved = json.loads((out / "report.json").read_text())
    assert [s["link"] for s in saved["samples"]] == [f"../samples/{s['file']}" for s in samples]


def test_markdown_tables_keep_their_columns_and_tags_stay_visible(written):
    out, _, _ = written
    md = (out / REPORT_MD).read_text()
    assert "&lt;" not in md and "`<giggles>`" in md
    samples_table = [ln for ln in md.splitlines() if ln.startswith("|") and "cute" in ln]
    assert samples_table and "That's \\| cute!" in samples_table[0]
    assert len(re.findall(r"(?<!\\)\|", samples_table[0])) == 5  # file, model, voice, text


def test_terminal_text_is_plain(written):
    _, report, _ = written
    text = render_text(report)
    for markup in ("&lt;", "&gt;", "&amp;", "**", "`", "](", "\\|"):
        assert markup not in text, markup
    assert "<giggles>" in text and "That's | cute!" in text and "reliance.png" in text
    assert text.splitlines()[0] == "Tag evaluation"
    assert f"Acceptance: {report['acceptance']['verdict']}" in text


def test_a_smoke_run_is_labelled_and_never_passes():
    # numbers that would pass every measured check: a smoke run still does not claim a pass
    report = _report(smoke=True)
    acc = report["acceptance"]
    assert acc["judged"] is False and acc["passed"] is False and acc["verdict"] == "not judged (smoke run)"
    assert {c["verdict"] for c in acc["checks"]} == {NOT_JUDGED, NOT_MEASURED}
    assert all(c["passed"] is None for c in acc["checks"])
    for rendered in (render_markdown(report), render_text(report)):
        top = "\n".join(rendered.splitlines()[:4])
        assert "smoke run" in top.lower() and "not judged" in top
        assert "FAIL" not in rendered and "not passed" not in rendered
    judged = _report(smoke=False)["acceptance"]
    assert judged["judged"] is True and judged["passed"] is True
    assert {c["verdict"] for c in judged["checks"]} == {PASS, NOT_MEASURED}


def test_failed_checks_are_counted_as_failures_outside_smoke_runs():
    acc = _report(gap=0.2, hit=0.1)["acceptance"]
    failed = [c["name"] for c in acc["checks"] if c["verdict"] == FAIL]
    assert acc["passed"] is False and acc["verdict"] == "not passed"
    assert "<giggles> reliance_gap tuned >= 1.0" in failed and "mean hit_rate >= 0.5" in failed
    assert "<sighs> hit_rate >= 0.3" in acc["not_measured"]


# ------------------------------------------------------------------------------------------------ figures

@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_reliance_figure_names_its_thresholds(plt):
    from tagtune.evaluate.plots import reliance_figure

    left, right = reliance_figure(_report()).axes
    assert _legend(left) == [f"tuned must reach ≥ {MIN_RELIANCE_GAP:g}", f"base must stay within ±{MAX_BASE_GAP:g}",
                             "tuned", "base"]
    assert _legend(right) == ["tuned", "base"]  # no acceptance threshold on the wrong-tag gap
    assert [t.get_text() for t in left.texts][:3] == ["2.00"] * 3  # every bar carries its value


def test_free_running_legend_lists_only_drawn_series_and_single_points_have_markers(plt):
    from tagtune.evaluate.plots import NOT_MEASURED, free_running_figure

    report = build_report(_report()["meta"], _sections(base_free=False))
    left, right = free_running_figure(report).axes
    assert "base" not in " ".join(_legend(left) + _legend(right))
    assert _legend(left) == ["tuned must reach ≥ 0.3", "tuned", "real clips (detector check)"]
    # <sighs> was never measured: marked n/a, not drawn as a zero bar
    assert sum(t.get_text() == NOT_MEASURED for t in left.texts) == 2
    # one value per series on the right: each is a visible marker, not only a bar
    markers = [ln for ln in right.lines if ln.get_marker() == "o"]
    assert sorted(len(ln.get_xdata()) for ln in markers) == [1, 1]


def test_confusion_numbers_are_white_on_dark_cells_and_black_on_light(plt):
    from tagtune.evaluate.plots import confusion_figure

    ax = confusion_figure(_report()).axes[0]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours == {"9": "white", "1": "black"}


# ------------------------------------------------------------------------------------------------ samples

def test_samples_are_named_by_their_sentence_and_indexed(tmp_path):
    from tagtune.demo import sample_name, write_sample_index
    from tagtune.folders import SAMPLE_INDEX_FILE, SAMPLE_INDEX_MD_FILE

    text = "Seriously? <giggles> That's the cutest thing I've ever heard!"
    assert sample_name(3, "tuned", text) == "03-tuned-seriously-giggles-thats-the-cutest-thing.wav"
    assert sample_name(12, "base", "你好") == "12-base-zh.wav"
    assert sample_name(2, "tuned", "真的吗？ <giggles> 这也太可爱了吧！", "unseen-male") == \
        "02-tuned-unseen-male-zh-giggles.wav"
    index = [{"file": sample_name(i, m, text), "model": m, "voice": "ref.wav", "text": text, "seed": i}
             for i in (1, 2) for m in ("base", "tuned")]
    write_sample_index(tmp_path, index)
    assert json.loads((tmp_path / SAMPLE_INDEX_FILE).read_text()) == index
    md = (tmp_path / SAMPLE_INDEX_MD_FILE).read_text()
    assert [unquote(t) for t in LINK.findall(md)] == [e["file"] for e in index]
    assert md.count("`<giggles>`") == len(index)
