"""The report as text a person reads: report.md for files, plain text for the terminal.

Both come from one list of section renderers, ``SECTIONS``. A renderer is ``section(report, w) -> list[str]``:
it reads the report dict and writes its lines through ``w``, a :class:`Markdown` or :class:`PlainText`
writer (headings, paragraphs, bullets, tables, links, inline code), so it never writes markup itself. A new
section is one more such function, placed in ``SECTIONS`` where it should appear; a renderer returns ``[]``
when the report has nothing for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote

from tagtune.evaluate.reliance import ONSET_CODES

TAG_RE = re.compile(r"<[^<>\s][^<>]*>")  # a tag such as <laughs> or <clears throat> inside plain text
SMOKE_NOTE = ("Smoke run: every stage ran end to end, at a size far too small to judge whether the tags were "
              "learned. The numbers are shown; the acceptance checks are not judged.")


class Markdown:
    """Writes GitHub-flavoured markdown; tags become inline code so they never vanish as HTML."""

    def heading(self, text: str, level: int = 2) -> list[str]:
        return ["#" * level + " " + self.text(text), ""]

    def paragraph(self, text: str) -> list[str]:
        return [text, ""]

    def note(self, text: str) -> list[str]:
        return ["> " + text, ""]

    def bullets(self, items: list[str]) -> list[str]:
        return [f"- {i}" for i in items] + [""]

    def text(self, s: str) -> str:
        """Plain words: tags as inline code, the rest escaped for markdown (pipes, angle brackets, stars)."""
        out, last = [], 0
        for m in TAG_RE.finditer(s):
            out += [_md_escape(s[last:m.start()]), self.code(m.group())]
            last = m.end()
        return "".join([*out, _md_escape(s[last:])])

    def code(self, s: str) -> str:
        return f"`{s.replace('|', chr(92) + '|')}`"

    def strong(self, s: str) -> str:
        return f"**{s}**"

    def link(self, label: str, target: str) -> str:
        return f"[{self.text(label)}]({quote(target)})"

    def image(self, label: str, target: str) -> list[str]:
        return [f"![{self.text(label)}]({quote(target)})", ""]

    def table(self, header: list[str], rows: list[list[str]]) -> list[str]:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


class PlainText:
    """Writes text for a terminal: no markup, tables as aligned columns."""

    def heading(self, text: str, level: int = 2) -> list[str]:
        return [text, ("=" if level == 1 else "-") * len(text), ""]

    def paragraph(self, text: str) -> list[str]:
        return [text, ""]

    def note(self, text: str) -> list[str]:
        return ["!! " + text, ""]

    def bullets(self, items: list[str]) -> list[str]:
        return [f"- {i}" for i in items] + [""]

    def text(self, s: str) -> str:
        return s

    def code(self, s: str) -> str:
        return s

    def strong(self, s: str) -> str:
        return s

    def link(self, label: str, target: str) -> str:
        return target if target == label or target.endswith("/" + label) else f"{label} ({target})"

    def image(self, label: str, target: str) -> list[str]:
        return [f"{label}: {target}"]

    def table(self, header: list[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]

        def line(cells):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]


def _md_escape(s: str) -> str:
    return re.sub(r"([\\|<*`\[\]])", r"\\\1", s)


def false_event_split(by_prompt: dict | None) -> str:
    """"twins a% of n, untagged clips b% of m": false events on tag-free twins vs on untagged clips' own texts."""
    if not by_prompt:
        return "–"
    names = {"tag_free_twins": "twins", "untagged_clips": "untagged clips"}
    return ", ".join(f"{name} {fmt(by_prompt[k]['rate'], True)} of {by_prompt[k]['prompts']}"
                     for k, name in names.items() if k in by_prompt)


def fmt(v, pct: bool = False, digits: int = 2) -> str:
    """A number as the report shows it; None (not measured) as a dash."""
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------------ sections

def _title(report: dict, w) -> list[str]:
    m = report["meta"]
    lines = w.heading("Tag evaluation" + (" (smoke run)" if m.get("smoke") else ""), 1)
    if m.get("smoke"):
        lines += w.note(w.strong(SMOKE_NOTE))
    val = m["validation"]
    lines += w.bullets([f"model: {w.code(str(m['model']))}", f"base: {w.code(str(m['base']))}",
                        f"data: {w.code(str(m['data']))} (validation: {val['tagged']} tagged, {val['untagged']} "
                        f"untagged clips), seed {m['seed']}"])
    return lines + w.paragraph(
        "Reliance gaps are NLL(tag removed) − NLL(with tag) in nats per event (summed over the event's codes; "
        "per clip where the corpus has no event boundaries), compared within one model. The onset gap is the same "
        f"over the event's first {ONSET_CODES} codes: how much the tag says that the event begins where it does.")


def _tag_table(report: dict, w) -> list[str]:
    header = ["tag", "trials (unit)", "reliance gap tuned", "base", "onset gap tuned", "wrong-tag gap tuned",
              "clip win rate", "hit rate", "hit rate base", "detector on real clips", "placement error ms"]
    rows = []
    for tag, e in report["tags"].items():
        se = e["reliance_gap_se"]["tuned"]
        gap = fmt(e["reliance_gap"]["tuned"]) + (f" ± {se:.2f}" if se is not None else "")
        rows.append([w.code(tag), f"{e['trials']} ({e['unit']})", gap, fmt(e["reliance_gap"]["base"]),
                     fmt((e.get("onset_gap") or {}).get("tuned")), fmt(e["wrong_tag_gap"]["tuned"]),
                     fmt(e["clip_win_rate"], True), fmt(e["hit_rate"], True), fmt(e["base"]["hit_rate"], True),
                     fmt(e["real_clips_hit_rate"], True),
                     fmt(e["placement_error_ms"], digits=0)])
    return w.heading("Per tag") + w.table(header, rows)


def _overall(report: dict, w) -> list[str]:
    o = report["overall"]
    split_tuned, split_base = (false_event_split(d.get("false_event_rate_by_prompt")) for d in (o, o["base"]))
    nll = o["untagged_nll"] or {}
    free = report["meta"].get("free_running") or {}
    guidance = free.get("tag_guidance", 1.0)
    decoding = f" with tag guidance {guidance:g}" if guidance != 1.0 else ""
    if guidance != 1.0 and not free.get("guide_until_onset", False):
        decoding += " on every code"  # the guidance of earlier releases, which also drew the events out
    share = free.get("anchor_share") or 0.0
    tuned_decoding = decoding + ((" anchored to the base" + (f", anchor share {share:g}" if share else ""))
                                 if free.get("base_anchor") else "")
    return w.heading("Overall") + w.bullets([
        f"untagged NLL per code: tuned {fmt(nll.get('tuned'), digits=4)}, base {fmt(nll.get('base'), digits=4)}, "
        f"ratio {w.strong(fmt(o['untagged_nll_ratio'], digits=4))}",
        f"free running (tuned{tuned_decoding}): mean hit rate {w.strong(fmt(o['mean_hit_rate'], True))}, "
        f"any-event rate {fmt(o['any_event_rate'], True)}, false-event rate on tag-free prompts "
        f"{w.strong(fmt(o['false_event_rate'], True))} ({split_tuned}); hit rate by where the event sits in its "
        f"recording: {edge_hits(o.get('hit_rate_by_edge'))}",
        f"free running (base{decoding}): mean hit rate {fmt(o['base']['mean_hit_rate'], True)}, false-event rate "
        f"{fmt(o['base']['false_event_rate'], True)} ({split_base})",
        f"detector held-out window accuracy {fmt(o['detector_accuracy'], True)} (class-balanced "
        f"{fmt(o['detector_balanced_accuracy'], True)}) on real clips; trained with "
        f"{o['detector_generated_negatives'] or 0} generated negatives; false positives on the base's held-out "
        f"generations: {fmt(o['detector_false_positive_rate'], True)} of clips, "
        f"{fmt(o['detector_false_positive_window_rate'], True)} of windows",
    ])


def edge_hits(by_edge: dict | None) -> str:
    """``summarize_free``'s hit_rate_by_edge as "leading x (n), inside y (n), trailing z (n)"."""
    return ", ".join(f"{edge} {fmt(v.get('hit_rate'), True)} ({v.get('trials', 0)})"
                     for edge, v in (by_edge or {}).items()) or "–"


def _confusion(report: dict, w) -> list[str]:
    conf = ((report["details"].get("free") or {}).get("tuned") or {}).get("confusion")
    if not conf:
        return []
    rows = [[w.code(tag), *(str(conf["counts"][tag][c]) for c in conf["columns"])] for tag in conf["rows"]]
    header = ["prompt tag", *(w.code(c) if TAG_RE.fullmatch(c) else c for c in conf["columns"])]
    return (w.heading("Confusion (tuned, free running): tag in the prompt vs event found near it")
            + w.table(header, rows))


def _acceptance(report: dict, w) -> list[str]:
    acc = report["acceptance"]
    shown = {"fail": w.strong("FAIL")}
    rows = [[w.code(c["name"]), fmt(c["value"], digits=3), shown.get(c["verdict"], c["verdict"])]
            for c in acc["checks"]]
    return w.heading(f"Acceptance: {acc['verdict']}") + w.table(["check", "value", "result"], rows)


def _figures(report: dict, w) -> list[str]:
    names = report.get("figures") or []
    if not names:
        return []
    lines = w.heading("Figures")
    for name in names:
        lines += w.image(name.removesuffix(".png").replace("_", " "), name)
    return lines


def _samples(report: dict, w) -> list[str]:
    samples = report.get("samples") or []
    if not samples:
        return []
    rows = [[w.link(s["file"], s["link"]), s["model"], w.code(s["voice"]), w.text(s["text"])] for s in samples]
    return w.heading("Samples") + w.table(["file", "model", "voice", "text"], rows)


def _footer(report: dict, w) -> list[str]:
    return w.paragraph(f"Evaluation took {report['meta']['seconds']} s.")


Section = Callable[[dict, object], list[str]]
SECTIONS: list[Section] = [_title, _tag_table, _overall, _confusion, _acceptance, _figures, _samples, _footer]


def render(report: dict, writer, sections: list[Section] | None = None) -> str:
    """The report through ``writer``, one section after another."""
    lines: list[str] = []
    for section in sections if sections is not None else SECTIONS:
        lines += section(report, writer)
        if lines and lines[-1]:
            lines.append("")
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def render_markdown(report: dict) -> str:
    """The whole report.md text."""
    return render(report, Markdown())


def render_text(report: dict) -> str:
    """The report for a terminal: the same sections as report.md, without markup."""
    return render(report, PlainText())
