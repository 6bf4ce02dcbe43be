"""The evaluation report: report.json (per tag and overall numbers, acceptance checks), report.md, PNG plots.

A smoke run (``meta["smoke"]``, the demo's quick variant) is too small to judge: its checks keep their values
but get the verdict ``NOT_JUDGED``, and its acceptance never reads as passed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tagtune.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("reliance.png", "free_running.png", "confusion.png")
# what a check says
PASS, FAIL, NOT_MEASURED, NOT_JUDGED = "pass", "fail", "not measured", "not judged at smoke size"
# acceptance thresholds of the tag-learning demo
MIN_RELIANCE_GAP = 1.0  # nats per event, tuned
MAX_BASE_GAP = 0.3  # |nats per event| for the base, whose tag rows are untrained
MIN_CLIP_WIN_RATE = 0.85
MAX_UNTAGGED_NLL_RATIO = 1.05
MIN_MEAN_HIT_RATE = 0.5
MIN_TAG_HIT_RATE = 0.3
MAX_FALSE_EVENT_RATE = 0.15
# transfer to other voices and to Chinese (the ``transfer`` section)
MIN_TRANSFER_RATIO = 0.8
MAX_SIMILARITY_DROP = 0.02  # cosine, base - tuned, for unseen voices


def _get(d: dict | None, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k)
    return d


def _tag_entry(tag: str, s: dict) -> dict:
    rel, free = s["reliance"], s.get("free") or {}
    entry = {
        "trials": _get(rel, "tuned", tag, "trials"),
        "unit": _get(rel, "tuned", tag, "unit"),
        "reliance_gap": {m: _get(rel, m, tag, "reliance_gap") for m in ("tuned", "base")},
        "reliance_gap_se": {m: _get(rel, m, tag, "reliance_gap_se") for m in ("tuned", "base")},
        "wrong_tag_gap": {m: _get(rel, m, tag, "wrong_tag_gap") for m in ("tuned", "base")},
        "onset_gap": {m: _get(rel, m, tag, "onset_gap") for m in ("tuned", "base")},
        "clip_win_rate": _get(rel, "tuned", tag, "clip_win_rate"),
        "hit_rate": _get(free, "tuned", "per_tag", tag, "hit_rate"),
        "placement_error_ms": _get(free, "tuned", "per_tag", tag, "placement_error_ms"),
        "base": {"clip_win_rate": _get(rel, "base", tag, "clip_win_rate"),
                 "hit_rate": _get(free, "base", "per_tag", tag, "hit_rate")},
        "real_clips_hit_rate": _get(free, "real_clips", "per_tag", tag, "hit_rate"),
    }
    return entry


def _overall(s: dict) -> dict:
    free = s.get("free") or {}
    return {
        "untagged_nll_ratio": _get(s, "forgetting", "untagged_nll_ratio"),
        "untagged_nll": _get(s, "forgetting", "untagged_nll"),
        "false_event_rate": _get(free, "tuned", "false_event_rate"),
        "false_event_rate_by_prompt": _get(free, "tuned", "false_event_rate_by_prompt"),
        "any_event_rate": _get(free, "tuned", "any_event_rate"),
        "mean_hit_rate": _get(free, "tuned", "mean_hit_rate"),
        "hit_rate_by_edge": _get(free, "tuned", "hit_rate_by_edge"),
        "placement_error_ms": _get(free, "tuned", "placement_error_ms"),
        "base": {k: _get(free, "base", k) for k in ("false_event_rate", "false_event_rate_by_prompt",
                                                    "any_event_rate", "mean_hit_rate")},
        "detector_accuracy": _get(s, "detector", "held_out", "accuracy"),
        "detector_balanced_accuracy": _get(s, "detector", "held_out", "balanced_accuracy"),
        # the detector on held-out generations of the base, which never emits events
        "detector_false_positive_rate": _get(free, "detector_on_base", "sequence_rate"),
        "detector_false_positive_window_rate": _get(free, "detector_on_base", "window_rate"),
        "detector_generated_negatives": _get(s, "detector", "generated_negatives"),
    }


def _check(name: str, value, ok, tag: str | None = None, smoke: bool = False) -> dict:
    passed = None if value is None or smoke else bool(ok(value))
    verdict = NOT_MEASURED if value is None else NOT_JUDGED if smoke else PASS if passed else FAIL
    return {"name": name, "tag": tag, "value": value, "passed": passed, "verdict": verdict}


def transfer_checks(transfer: dict, smoke: bool = False) -> list[dict]:
    """Transfer ratio for every condition but the reference one, false events and forgetting in every
    condition, and the speaker-similarity drop for unseen voices."""
    from tagtune.evaluate.transfer import CONDITIONS, REFERENCE_CONDITION, UNSEEN_CONDITIONS

    checks = []
    for c in (c for c in CONDITIONS if c in transfer):
        t = transfer[c]
        if c != REFERENCE_CONDITION:
            checks.append(_check(f"{c} transfer_ratio >= {MIN_TRANSFER_RATIO}", t["transfer_ratio"],
                                 lambda v: v >= MIN_TRANSFER_RATIO, smoke=smoke))
        checks.append(_check(f"{c} false_event_rate <= {MAX_FALSE_EVENT_RATE}", t["false_event_rate"],
                             lambda v: v <= MAX_FALSE_EVENT_RATE, smoke=smoke))
        checks.append(_check(f"{c} untagged_nll_ratio <= {MAX_UNTAGGED_NLL_RATIO}", t["untagged_nll_ratio"],
                             lambda v: v <= MAX_UNTAGGED_NLL_RATIO, smoke=smoke))
        if c in UNSEEN_CONDITIONS:
            checks.append(_check(f"{c} speaker similarity drop <= {MAX_SIMILARITY_DROP}",
                                 t["speaker_similarity"]["drop"], lambda v: v <= MAX_SIMILARITY_DROP, smoke=smoke))
    return checks


def acceptance(tags: dict, overall: dict, smoke: bool = False, transfer: dict | None = None) -> dict:
    """The demo's acceptance criteria, each with its value and verdict.

    ``passed`` is None for a check not measured here and for every check of a ``smoke`` run; the whole
    acceptance passes only when it was judged and every measured check passed.
    """
    checks = []
    for tag, e in tags.items():
        checks.append(_check(f"{tag} reliance_gap tuned >= {MIN_RELIANCE_GAP}", e["reliance_gap"]["tuned"],
                             lambda v: v >= MIN_RELIANCE_GAP, tag, smoke))
        checks.append(_check(f"{tag} |reliance_gap| base <= {MAX_BASE_GAP}", e["reliance_gap"]["base"],
                             lambda v: abs(v) <= MAX_BASE_GAP, tag, smoke))
        checks.append(_check(f"{tag} clip_win_rate >= {MIN_CLIP_WIN_RATE}", e["clip_win_rate"],
                             lambda v: v >= MIN_CLIP_WIN_RATE, tag, smoke))
        checks.append(_check(f"{tag} hit_rate >= {MIN_TAG_HIT_RATE}", e["hit_rate"], lambda v: v >= MIN_TAG_HIT_RATE,
                             tag, smoke))
    checks.append(_check(f"untagged_nll_ratio <= {MAX_UNTAGGED_NLL_RATIO}", overall["untagged_nll_ratio"],
                         lambda v: v <= MAX_UNTAGGED_NLL_RATIO, smoke=smoke))
    checks.append(_check(f"mean hit_rate >= {MIN_MEAN_HIT_RATE}", overall["mean_hit_rate"],
                         lambda v: v >= MIN_MEAN_HIT_RATE, smoke=smoke))
    checks.append(_check(f"false_event_rate <= {MAX_FALSE_EVENT_RATE}", overall["false_event_rate"],
                         lambda v: v <= MAX_FALSE_EVENT_RATE, smoke=smoke))
    if transfer:
        checks += transfer_checks(transfer, smoke)
    judged = [c for c in checks if c["passed"] is not None]
    passed = bool(judged) and all(c["passed"] for c in judged)
    return {"checks": checks, "judged": not smoke, "passed": passed,
            "verdict": "not judged (smoke run)" if smoke else "passed" if passed else "not passed",
            "not_measured": [c["name"] for c in checks if c["value"] is None]}


def build_report(meta: dict, sections: dict) -> dict:
    """report.json's content from the evaluation sections (reliance, untagged, forgetting, detector, free)."""
    tags = {tag: _tag_entry(tag, sections) for tag in meta["tags"]}
    overall = _overall(sections)
    transfer = sections.pop("transfer", None)
    report = {"meta": meta, "tags": tags, "overall": overall,
              "acceptance": acceptance(tags, overall, smoke=bool(meta.get("smoke")), transfer=transfer),
              "details": sections}
    if transfer is not None:
        report["transfer"] = transfer
    return report


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401  (the "eval" extra)
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'tagtune[eval]'): report written without plots")
        return False
    return True


def write_report(report: dict, out_dir: Path, plots: bool = True) -> None:
    """Write the PNG figures (with ``plots``), then report.json and report.md, which link the figures written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = []
    if plots and _have_matplotlib():
        from tagtune.evaluate.judges.report import judges_plots
        from tagtune.evaluate.plots import render_plots
        from tagtune.evaluate.transfer_report import transfer_plots

        for name, png in {**render_plots(report), **judges_plots(report), **transfer_plots(report)}.items():
            atomic_write_bytes(out_dir / name, png)
            report["figures"].append(name)
    _write_texts(report, out_dir)


def attach_samples(report: dict, out_dir: Path, samples: list[dict], samples_dir: Path) -> None:
    """Add the sample list (entries of a sample index, files in ``samples_dir``) to a written report.

    Each entry gains ``link``, the file's path relative to ``out_dir``; report.json and report.md are rewritten.
    """
    out_dir = Path(out_dir)
    rel = Path(os.path.relpath(Path(samples_dir).resolve(), out_dir.resolve()))
    report["samples"] = [{**s, "link": (rel / s["file"]).as_posix()} for s in samples]
    _write_texts(report, out_dir)


def _write_texts(report: dict, out_dir: Path) -> None:
    from tagtune.evaluate.report_md import render_markdown

    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report, indent=1, ensure_ascii=False, default=float))
    from tagtune.evaluate.judges.report import judges_markdown
    from tagtune.evaluate.transfer_report import transfer_markdown

    atomic_write_text(out_dir / REPORT_MD, render_markdown(report) + transfer_markdown(report)
                      + judges_markdown(report))
