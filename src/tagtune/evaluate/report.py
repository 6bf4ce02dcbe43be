"""The evaluation report: report.json (per tag and overall numbers, acceptance checks), report.md, PNG plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tagtune.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("reliance.png", "free_running.png", "confusion.png")
# acceptance thresholds of the tag-learning demo
MIN_RELIANCE_GAP = 1.0  # nats per event, tuned
MAX_BASE_GAP = 0.3  # |nats per event| for the base, whose tag rows are untrained
MIN_CLIP_WIN_RATE = 0.85
MAX_UNTAGGED_NLL_RATIO = 1.05
MIN_MEAN_HIT_RATE = 0.5
MIN_TAG_HIT_RATE = 0.3
MAX_FALSE_EVENT_RATE = 0.15


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
        "any_event_rate": _get(free, "tuned", "any_event_rate"),
        "mean_hit_rate": _get(free, "tuned", "mean_hit_rate"),
        "placement_error_ms": _get(free, "tuned", "placement_error_ms"),
        "base": {k: _get(free, "base", k) for k in ("false_event_rate", "any_event_rate", "mean_hit_rate")},
        "detector_accuracy": _get(s, "detector", "held_out", "accuracy"),
        "detector_balanced_accuracy": _get(s, "detector", "held_out", "balanced_accuracy"),
        # the detector on held-out generations of the base, which never emits events
        "detector_false_positive_rate": _get(free, "detector_on_base", "sequence_rate"),
        "detector_false_positive_window_rate": _get(free, "detector_on_base", "window_rate"),
        "detector_generated_negatives": _get(s, "detector", "generated_negatives"),
    }


def _check(name: str, value, ok) -> dict:
    return {"name": name, "value": value, "passed": None if value is None else bool(ok(value))}


def acceptance(tags: dict, overall: dict) -> dict:
    """The demo's acceptance criteria, each with its value (None = not measurable here)."""
    checks = []
    for tag, e in tags.items():
        checks.append(_check(f"{tag} reliance_gap tuned >= {MIN_RELIANCE_GAP}", e["reliance_gap"]["tuned"],
                             lambda v: v >= MIN_RELIANCE_GAP))
        checks.append(_check(f"{tag} |reliance_gap| base <= {MAX_BASE_GAP}", e["reliance_gap"]["base"],
                             lambda v: abs(v) <= MAX_BASE_GAP))
        checks.append(_check(f"{tag} clip_win_rate >= {MIN_CLIP_WIN_RATE}", e["clip_win_rate"],
                             lambda v: v >= MIN_CLIP_WIN_RATE))
        checks.append(_check(f"{tag} hit_rate >= {MIN_TAG_HIT_RATE}", e["hit_rate"], lambda v: v >= MIN_TAG_HIT_RATE))
    checks.append(_check(f"untagged_nll_ratio <= {MAX_UNTAGGED_NLL_RATIO}", overall["untagged_nll_ratio"],
                         lambda v: v <= MAX_UNTAGGED_NLL_RATIO))
    checks.append(_check(f"mean hit_rate >= {MIN_MEAN_HIT_RATE}", overall["mean_hit_rate"],
                         lambda v: v >= MIN_MEAN_HIT_RATE))
    checks.append(_check(f"false_event_rate <= {MAX_FALSE_EVENT_RATE}", overall["false_event_rate"],
                         lambda v: v <= MAX_FALSE_EVENT_RATE))
    measured = [c for c in checks if c["passed"] is not None]
    return {"checks": checks, "passed": bool(measured) and all(c["passed"] for c in measured),
            "not_measured": [c["name"] for c in checks if c["passed"] is None]}


def build_report(meta: dict, sections: dict) -> dict:
    """report.json's content from the evaluation sections (reliance, untagged, forgetting, detector, free)."""
    tags = {tag: _tag_entry(tag, sections) for tag in meta["tags"]}
    overall = _overall(sections)
    return {"meta": meta, "tags": tags, "overall": overall, "acceptance": acceptance(tags, overall),
            "details": sections}


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401  (the "eval" extra)
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'tagtune[eval]'): report written without plots")
        return False
    return True


def write_report(report: dict, out_dir: Path, plots: bool = True) -> None:
    """Write report.json, report.md and (with ``plots``) the PNG figures."""
    from tagtune.evaluate.report_md import render_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report, indent=1, ensure_ascii=False, default=float))
    atomic_write_text(out_dir / REPORT_MD, render_markdown(report))
    if plots and _have_matplotlib():
        from tagtune.evaluate.plots import render_plots

        for name, png in render_plots(report).items():
            atomic_write_bytes(out_dir / name, png)
