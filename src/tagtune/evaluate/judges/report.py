"""The judges' part of report.md and its figure (judges.png): tuned and base side by side."""

from __future__ import annotations

import io

MODELS = ("tuned", "base")
FIGURE = "judges.png"
BAR_WIDTH = 0.38


def _fmt(v, pct: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def _ci(ci, pct: bool = False) -> str:
    return f" [{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]" if ci else ""


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _events(ev: dict) -> list[str]:
    acc = ev.get("judge_accuracy") or {}
    lines = ["", f"### Events (judge: `{ev['judge']}`; held-out balanced accuracy "
                 f"{_fmt(acc.get('balanced_accuracy'), True)}: {acc.get('method', '')})", "",
             "| tag | model | precision | recall | F1 | onset error ms |", "|---|---|---|---|---|---|"]
    for tag in ev["tags_judged"]:
        for m in MODELS:
            s = (ev.get(m) or {}).get("per_tag", {}).get(tag)
            if s:
                ci = s.get("ci95") or {}
                cells = [f"{_fmt(s[k], True)}{_ci(ci.get(k), True)}" for k in ("precision", "recall", "f1")]
                lines.append(f"| `{tag}` | {m} | {' | '.join(cells)} | {_fmt(s['onset_error_ms'], digits=0)} |")
    conf = (ev.get("tuned") or {}).get("confusion")
    if conf:
        lines += ["", "Confusion (tuned): tag in the prompt vs the event nearest its place", "",
                  "| prompt tag | " + " | ".join(_cell(c) for c in conf["columns"]) + " |",
                  "|---" * (len(conf["columns"]) + 1) + "|"]
        lines += [f"| `{t}` | " + " | ".join(str(conf["counts"][t][c]) for c in conf["columns"]) + " |"
                  for t in conf["rows"]]
        lines.append("")
    for m in MODELS:
        s = ev.get(m)
        if s:
            lines.append(f"- {m}: overall F1 {_fmt(s['overall']['f1'], True)}, events on tag-free prompts "
                         f"{_fmt(s['false_event_rate'], True)} of {s['untagged_clips']} clips")
    return lines


def _words(words: dict) -> list[str]:
    lines = ["", f"### Words (judge: `{words['judge']}`)", "",
             "| metric | model | all | with tags | without tags | clips |", "|---|---|---|---|---|---|"]
    for key in ("wer", "cer"):
        for m in MODELS:
            s = (words.get(key) or {}).get(m)
            if s and s["clips"]:
                lines.append(f"| {key.upper()} | {m} | {_fmt(s['value'], True)}{_ci(s['ci95'], True)} | "
                             f"{_fmt(s['with_tags'], True)} | {_fmt(s['without_tags'], True)} | {s['clips']} |")
    return lines


def _voice(voice: dict) -> list[str]:
    lines = ["", f"### Voice (judge: `{voice['judge']}`): cosine similarity to the reference", "",
             "| model | all | with tags | without tags |", "|---|---|---|---|"]
    for m in MODELS:
        s = voice["similarity"].get(m)
        if s:
            lines.append(f"| {m} | {_fmt(s['value'], digits=3)}{_ci(s['ci95'])} | {_fmt(s['with_tags'], digits=3)} | "
                         f"{_fmt(s['without_tags'], digits=3)} |")
    return lines


def _per_voice(per_voice: dict) -> list[str]:
    lines = ["", "### Per voice", "", "| voice | model | events F1 | WER | CER | similarity |",
             "|---|---|---|---|---|---|"]
    for name, models in per_voice.items():
        for m, s in models.items():
            f1 = (s.get("events") or {}).get("overall", {}).get("f1")
            wer, cer = ((s.get(k) or {}).get("value") for k in ("wer", "cer"))
            lines.append(f"| {_cell(name)} | {m} | {_fmt(f1, True)} | {_fmt(wer, True)} | {_fmt(cer, True)} | "
                         f"{_fmt((s.get('similarity') or {}).get('value'), digits=3)} |")
    return lines


def judges_markdown(report: dict) -> str:
    """The "Judges" section of report.md ("" when no judge ran)."""
    j = report.get("judges")
    if not j:
        return ""
    st = j["settings"]
    lines = ["", "## Judges", "",
             f"{st['prompts']} suite prompts ({st['tagged_prompts']} tagged, each also spoken without its tags; "
             f"{st['prompts_left_out']} left out for tags the model lacks), {st['clips']} clips per voice, voices: "
             f"{', '.join(map(_cell, st['voices']))} ({_cell(st['voice_source'])}). Brackets: 95% intervals from "
             f"{st['resamples']} resamples of the clips."]
    if j.get("events"):
        lines += _events(j["events"])
    if j.get("words"):
        lines += _words(j["words"])
    if j.get("voice"):
        lines += _voice(j["voice"])
    lines += _per_voice(j.get("per_voice") or {})
    return "\n".join(lines) + "\n"


def judges_plots(report: dict) -> dict[str, bytes]:
    """{FIGURE: png} with the events judge's F1 per tag, WER/CER and similarity, tuned vs base ({} without judges)."""
    j = report.get("judges")
    if not j:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    ev = j.get("events") or {}
    tags = ev.get("tags_judged", [])
    for k, m in enumerate(m for m in MODELS if ev.get(m)):
        xs = [i + (k - 0.5) * BAR_WIDTH for i in range(len(tags))]
        axes[0].bar(xs, [ev[m]["per_tag"][t]["f1"] or 0.0 for t in tags], BAR_WIDTH, label=m)
    axes[0].set_xticks(range(len(tags)), tags)
    axes[0].set_title("events judge: F1 per tag")
    words = j.get("words") or {}
    names = [f"{key.upper()} {m}" for key in ("wer", "cer") for m in MODELS
             if ((words.get(key) or {}).get(m) or {}).get("value") is not None]
    axes[1].bar(names, [words[n.split()[0].lower()][n.split()[1]]["value"] for n in names])
    axes[1].set_title("words judge: error rate")
    sims = (j.get("voice") or {}).get("similarity") or {}
    shown = [m for m in MODELS if (sims.get(m) or {}).get("value") is not None]
    axes[2].bar(shown, [sims[m]["value"] for m in shown])
    axes[2].set_title("voice judge: similarity")
    if any(ev.get(m) for m in MODELS):
        axes[0].legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return {FIGURE: buf.getvalue()}
