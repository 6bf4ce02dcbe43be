"""report.md: the evaluation report as tables a person reads."""

from __future__ import annotations


def _fmt(v, pct: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def _cell(text: str) -> str:
    """Table-safe text: a pipe would split the cell and a bare <tag> would vanish as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _tag_table(report: dict) -> list[str]:
    lines = ["| tag | trials (unit) | reliance gap tuned | base | wrong-tag gap tuned | clip win rate | "
             "hit rate | hit rate base | detector on real clips | placement error ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tag, e in report["tags"].items():
        se = e["reliance_gap_se"]["tuned"]
        gap = _fmt(e["reliance_gap"]["tuned"]) + (f" ± {se:.2f}" if se is not None else "")
        lines.append(f"| `{tag}` | {e['trials']} ({e['unit']}) | {gap} | {_fmt(e['reliance_gap']['base'])} | "
                     f"{_fmt(e['wrong_tag_gap']['tuned'])} | {_fmt(e['clip_win_rate'], True)} | "
                     f"{_fmt(e['hit_rate'], True)} | {_fmt(e['base']['hit_rate'], True)} | "
                     f"{_fmt(e['real_clips_hit_rate'], True)} | {_fmt(e['placement_error_ms'], digits=0)} |")
    return lines


def _overall(report: dict) -> list[str]:
    o = report["overall"]
    nll = o["untagged_nll"] or {}
    return [
        f"- untagged NLL per code: tuned {_fmt(nll.get('tuned'), digits=4)}, base {_fmt(nll.get('base'), digits=4)}, "
        f"ratio **{_fmt(o['untagged_nll_ratio'], digits=4)}**",
        f"- free running (tuned): mean hit rate **{_fmt(o['mean_hit_rate'], True)}**, any-event rate "
        f"{_fmt(o['any_event_rate'], True)}, false-event rate on tag-free prompts "
        f"**{_fmt(o['false_event_rate'], True)}**",
        f"- free running (base): mean hit rate {_fmt(o['base']['mean_hit_rate'], True)}, false-event rate "
        f"{_fmt(o['base']['false_event_rate'], True)}",
        f"- detector held-out window accuracy {_fmt(o['detector_accuracy'], True)} "
        f"(class-balanced {_fmt(o['detector_balanced_accuracy'], True)}) on real clips; trained with "
        f"{o['detector_generated_negatives'] or 0} generated negatives; false positives on the base's held-out "
        f"generations: {_fmt(o['detector_false_positive_rate'], True)} of clips, "
        f"{_fmt(o['detector_false_positive_window_rate'], True)} of windows",
    ]


def _confusion(report: dict) -> list[str]:
    conf = ((report["details"].get("free") or {}).get("tuned") or {}).get("confusion")
    if not conf:
        return []
    lines = ["", "## Confusion (tuned, free running): tag in the prompt vs event found near it", "",
             "| prompt tag | " + " | ".join(_cell(c) for c in conf["columns"]) + " |",
             "|---" * (len(conf["columns"]) + 1) + "|"]
    for tag in conf["rows"]:
        lines.append(f"| `{tag}` | " + " | ".join(str(conf["counts"][tag][c]) for c in conf["columns"]) + " |")
    return lines


def _acceptance(report: dict) -> list[str]:
    acc = report["acceptance"]
    mark = {True: "pass", False: "**FAIL**", None: "not measured"}
    lines = ["", f"## Acceptance: {'passed' if acc['passed'] else 'not passed'}", "", "| check | value | result |",
             "|---|---|---|"]
    lines += [f"| {_cell(c['name'])} | {_fmt(c['value'], digits=3)} | {mark[c['passed']]} |" for c in acc["checks"]]
    return lines


def render_markdown(report: dict) -> str:
    """The whole report.md text."""
    m = report["meta"]
    head = [
        "# Tag evaluation", "",
        f"- model: `{m['model']}`", f"- base: `{m['base']}`", f"- data: `{m['data']}` (validation: "
        f"{m['validation']['tagged']} tagged, {m['validation']['untagged']} untagged clips), seed {m['seed']}",
        "", "Reliance gaps are NLL(tag removed) − NLL(with tag) in nats per event (summed over the event's codes; "
        "per clip where the corpus has no event boundaries), compared within one model.", "",
    ]
    body = [*head, *_tag_table(report), "", "## Overall", "", *_overall(report), *_confusion(report),
            *_acceptance(report), "", f"Evaluation took {m['seconds']} s.", ""]
    return "\n".join(body)
