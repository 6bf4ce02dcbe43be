"""The transfer part of report.md and its figure (transfer.png): the four conditions side by side."""

from __future__ import annotations

import io

from tagtune.evaluate.freerun import EDGE_S
from tagtune.evaluate.loading import TUNED
from tagtune.evaluate.reliance import ONSET_CODES
from tagtune.evaluate.report import MAX_SIMILARITY_DROP, MIN_TRANSFER_RATIO
from tagtune.evaluate.report_md import edge_hits, false_event_split
from tagtune.evaluate.transfer import CONDITIONS, REFERENCE_CONDITION

FIGURE = "transfer.png"
BAR_WIDTH = 0.38
CONDITION_NAMES = {"ft_voice_en": "fine-tune voice, English", "unseen_en": "unseen voices, English",
                   "ft_voice_zh": "fine-tune voice, Chinese", "unseen_zh": "unseen voices, Chinese"}


def _fmt(v, pct: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def _present(transfer: dict) -> list[str]:
    return [c for c in CONDITIONS if c in transfer]


def _similarity_split(similarity: dict) -> str:
    by_prompt = similarity.get("by_prompt") or {}
    return ", ".join(f"{name} {_fmt((by_prompt.get(k) or {}).get('drop'), digits=3)}"
                     for k, name in (("tagged", "tagged"), ("tag_free", "tag-free")))


def _drop_text(similarity: dict) -> str:
    se = similarity.get("drop_se")
    return _fmt(similarity.get("drop"), digits=3) + (f" ± {se:.3f}" if se is not None else "")


def transfer_markdown(report: dict) -> str:
    """The "Transfer" section of report.md ("" without a transfer set)."""
    t = report.get("transfer")
    if not t:
        return ""
    conds = _present(t)
    tags = [k for k in t[conds[0]]["hit_rate"] if k != "mean"]
    judges = t["judges"]
    det = (judges["detector"].get("held_out") or {})
    emb = judges["speaker_embedding"]
    lines = ["", "## Transfer to unseen voices and to Chinese", "",
             f"Fine-tune voices: {', '.join(t['fine_tune_voices'])}. Per condition, {t['settings']['prompts']} "
             f"tagged prompts at most (each also without its tags) and {t['settings']['untagged_prompts']} untagged "
             f"ones (as many as the condition has: column prompts), with the clip's own voice as reference. "
             f"transfer ratio = mean hit rate / mean hit rate in "
             f"`{REFERENCE_CONDITION}` (goal >= {MIN_TRANSFER_RATIO}); recordings: the detector's mean hit rate on the "
             "prompt clips' own recordings and its ratio across conditions, what the judge gives real events; "
             f"similarity: cosine of the generated codes' "
             f"speaker embedding to the prompt clip's recording (goal: tuned at most {MAX_SIMILARITY_DROP} below "
             "base for unseen voices).", "",
             "| condition | voices | prompts | " + " | ".join(f"hit `{x}`" for x in tags)
             + " | mean hit (base) | transfer ratio | recordings: hit (ratio) | false events | untagged NLL ratio "
             "| similarity tuned / base | similarity drop ± s.e. |",
             "|---|---|---|" + "---|" * len(tags) + "---|---|---|---|---|---|---|"]
    for c in conds:
        e, base = t[c], t[c].get("base") or {}
        sim, real = e["speaker_similarity"], e.get("real_clips") or {}
        lines.append(
            f"| {CONDITION_NAMES[c]} | {', '.join(t['voices'][c])} | {e['clips']['tagged']} + "
            f"{e['clips']['untagged']} | "
            + " | ".join(_fmt(e["hit_rate"][x], True) for x in tags)
            + f" | {_fmt(e['hit_rate']['mean'], True)} ({_fmt((base.get('hit_rate') or {}).get('mean'), True)})"
            f" | {_fmt(e['transfer_ratio'])}"
            f" | {_fmt((real.get('hit_rate') or {}).get('mean'), True)} ({_fmt(real.get('transfer_ratio'))})"
            f" | {_fmt(e['false_event_rate'], True)}"
            f" | {_fmt(e['untagged_nll_ratio'], digits=3)}"
            f" | {_fmt(sim['tuned'], digits=3)} / {_fmt(sim['base'], digits=3)} | {_drop_text(sim)} |")
    more = (f" and {emb['extra_voice_clips']} clips of more voices ({t['settings'].get('voices_dir')})"
            if emb.get("extra_voice_clips") else "")
    lines += ["", f"Judges, fitted on the transfer set's training split{more}: event detector held-out accuracy "
                  f"{_fmt(det.get('accuracy'), True)} (balanced {_fmt(det.get('balanced_accuracy'), True)}); speaker "
                  f"embedding held-out speaker accuracy {_fmt(emb.get('accuracy'), True)} over "
                  f"{emb.get('speakers', '–')} voices. The drop's standard error pairs each prompt's two "
                  "generations; refitting the speaker embedding on another split moves it too."]
    lines += ["", "Hit rate by where the event sits in its recording (tuned; trials; within "
                  f"{EDGE_S:g} s of the clip's start or end, where a trailing event must come before the stop): "
              + "; ".join(f"{CONDITION_NAMES[c]}: {edge_hits((t[c].get(TUNED) or {}).get('hit_rate_by_edge'))}"
                          for c in conds) + "."]
    lines += ["", "Reliance gap per tag (tuned, teacher-forced on the condition's tagged recordings, nats per event): "
              + "; ".join(f"{CONDITION_NAMES[c]}: " + ", ".join(f"`{x}` {_fmt((t[c].get('reliance_gap') or {}).get(x))}"
                                                              for x in tags) for c in conds)]
    lines += ["", f"Onset gap per tag (the same over each event's first {ONSET_CODES} codes: how much the tag says "
                  "that the event begins there): "
              + "; ".join(f"{CONDITION_NAMES[c]}: " + ", ".join(f"`{x}` {_fmt((t[c].get('onset_gap') or {}).get(x))}"
                                                              for x in tags) for c in conds)]
    lines += ["", "False events split by prompt (tuned): tag-free twins of tagged clips (text written around a tag) vs "
                  "untagged clips' own texts: "
              + "; ".join(f"{CONDITION_NAMES[c]}: {false_event_split(t[c].get('false_event_rate_by_prompt'))}"
                          for c in conds) + "."]
    lines += ["", "Speaker-similarity drop (base - tuned) split by prompt: tagged prompts (with their events) vs "
                  "tag-free ones (twins and untagged clips): "
              + "; ".join(f"{CONDITION_NAMES[c]}: {_similarity_split(t[c]['speaker_similarity'])}" for c in conds)
              + "."]
    if "transfer.png" in report.get("figures", []):
        lines += ["", f"![transfer]({FIGURE})"]
    return "\n".join(lines) + "\n"


def transfer_plots(report: dict) -> dict[str, bytes]:
    """{FIGURE: png}: mean hit rate and speaker similarity per condition, tuned vs base ({} without transfer)."""
    t = report.get("transfer")
    if not t:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = _present(t)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for k, m in enumerate(("tuned", "base")):
        xs = [i + (k - 0.5) * BAR_WIDTH for i in range(len(conds))]
        hits = [((t[c].get(m) or {}).get("hit_rate") or {}).get("mean") for c in conds]
        sims = [t[c]["speaker_similarity"].get(m) for c in conds]
        for ax, values in ((axes[0], hits), (axes[1], sims)):
            ax.bar(xs, [v or 0.0 for v in values], BAR_WIDTH, label=m)
            for x, v in zip(xs, values):
                ax.annotate("n/a" if v is None else f"{v:.2f}", (x, v or 0.0), ha="center", va="bottom", fontsize=8)
    reference = (t[REFERENCE_CONDITION].get("tuned") or {}).get("hit_rate", {}).get("mean")
    if reference:
        axes[0].axhline(MIN_TRANSFER_RATIO * reference, color="black", linestyle="--", linewidth=1,
                        label=f"tuned goal: {MIN_TRANSFER_RATIO} x {REFERENCE_CONDITION}")
    axes[0].set_title("mean hit rate per condition")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_title("speaker similarity to the reference")
    for ax in axes:
        ax.set_xticks(range(len(conds)), [CONDITION_NAMES[c].replace(", ", "\n") for c in conds], fontsize=8)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return {FIGURE: buf.getvalue()}
