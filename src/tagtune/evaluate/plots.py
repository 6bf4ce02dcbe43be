"""PNG figures of the report: reliance gaps, free-running rates, the confusion matrix.

Each ``*_figure`` returns a matplotlib Figure (tests read its artists); ``render_plots`` turns them into PNG
bytes. Only series with at least one measured value are drawn and named in a legend; a value that was not
measured is marked "n/a" at its place; every bar carries a marker and its value, so a zero or a single bar
stays visible; acceptance thresholds are drawn and named with the model they apply to.
"""

from __future__ import annotations

import io

from tagtune.evaluate.report import (
    MAX_BASE_GAP,
    MAX_FALSE_EVENT_RATE,
    MIN_RELIANCE_GAP,
    MIN_TAG_HIT_RATE,
)

# report series -> (legend name, colour); the same colour for a series in every figure
SERIES = {"tuned": ("tuned", "tab:blue"), "base": ("base", "tab:orange"),
          "real_clips": ("real clips (detector check)", "tab:green")}
GROUP_WIDTH = 0.8  # of the unit between two tags, shared by the bars of one tag
THRESHOLD_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1}
DARK_CELL_LUMINANCE = 0.5  # cells darker than this get white numbers
DPI = 110
NOT_MEASURED = "n/a"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _drawn(series: dict[str, list]) -> dict[str, list]:
    """The series with at least one measured value."""
    return {k: v for k, v in series.items() if any(x is not None for x in v)}


def _bars(ax, labels: list[str], series: dict[str, list], errors: dict[str, list] | None = None,
          digits: int = 2) -> None:
    """Grouped bars: one group per label, one bar per drawn series; markers and values on every bar."""
    drawn = _drawn(series)
    width = GROUP_WIDTH / max(1, len(drawn))
    for k, (key, values) in enumerate(drawn.items()):
        name, colour = SERIES[key]
        offset = (k - (len(drawn) - 1) / 2) * width
        xs = [i + offset for i, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        yerr = None
        if errors and errors.get(key):
            yerr = [e or 0.0 for e, v in zip(errors[key], values) if v is not None]
        bars = ax.bar(xs, ys, width, yerr=yerr, capsize=3 if yerr else 0, label=name, color=colour)
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=4, color=colour, markeredgecolor="black")
        ax.bar_label(bars, labels=[_number(y, digits) for y in ys], fontsize=7, padding=2)
        for i, v in enumerate(values):
            if v is None:
                ax.text(i + offset, 0, NOT_MEASURED, ha="center", va="bottom", fontsize=8, color="dimgrey")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xticks(range(len(labels)), labels)
    ax.margins(y=0.15)


def _number(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _legend(ax) -> None:
    """Below the axes, so it never hides a bar."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)


def reliance_figure(report: dict):
    """Reliance gap (tag removed) with the acceptance thresholds, and the wrong-tag gap (no threshold)."""
    import matplotlib.pyplot as plt

    tags = list(report["tags"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    entries = [report["tags"][t] for t in tags]
    left, right = axes
    _bars(left, tags, {m: [e["reliance_gap"][m] for e in entries] for m in ("tuned", "base")},
          errors={m: [e["reliance_gap_se"][m] for e in entries] for m in ("tuned", "base")})
    left.axhline(MIN_RELIANCE_GAP, label=f"tuned must reach ≥ {MIN_RELIANCE_GAP:g}", **THRESHOLD_STYLE)
    left.axhspan(-MAX_BASE_GAP, MAX_BASE_GAP, color="grey", alpha=0.2,
                 label=f"base must stay within ±{MAX_BASE_GAP:g}")
    left.set_title("NLL gain of the tag over no tag (± 1 s.e.)")
    _bars(right, tags, {m: [e["wrong_tag_gap"][m] for e in entries] for m in ("tuned", "base")})
    right.set_title("NLL gain of the tag over a wrong tag")
    for ax in axes:
        ax.set_ylabel("nats per event")
        _legend(ax)
    fig.tight_layout()
    return fig


def free_running_figure(report: dict):
    """Hit rate per tag with its threshold, and false events on tag-free prompts with theirs."""
    import matplotlib.pyplot as plt

    tags = list(report["tags"])
    free = report["details"].get("free") or {}
    series = {k: [((free.get(k) or {}).get("per_tag", {}).get(t) or {}).get("hit_rate") for t in tags]
              for k in SERIES if free.get(k)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    _bars(left, tags, series)
    left.axhline(MIN_TAG_HIT_RATE, label=f"tuned must reach ≥ {MIN_TAG_HIT_RATE:g}", **THRESHOLD_STYLE)
    left.set_title("right event near the tag")
    left.set_ylabel("hit rate")
    false_rates = {k: [(free.get(k) or {}).get("false_event_rate")] for k in SERIES if free.get(k)}
    _bars(right, ["tag-free prompts"], false_rates)
    right.axhline(MAX_FALSE_EVENT_RATE, label=f"tuned must stay ≤ {MAX_FALSE_EVENT_RATE:g}", **THRESHOLD_STYLE)
    right.set_title("events where no tag asked for one")
    right.set_ylabel("false-event rate")
    for ax in (left, right):
        ax.set_ylim(0, 1.1)
        _legend(ax)
    fig.tight_layout()
    return fig


def _text_colour(rgba) -> str:
    """White on dark cells, black on light ones (relative luminance of the cell colour)."""
    r, g, b = rgba[:3]
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < DARK_CELL_LUMINANCE else "black"


def confusion_figure(report: dict):
    """Counts of (tag in the prompt, event found near it) for the tuned model; numbers readable on every cell."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    conf = report["details"]["free"]["tuned"]["confusion"]
    grid = [[conf["counts"][r][c] for c in conf["columns"]] for r in conf["rows"]]
    fig, ax = plt.subplots(figsize=(1.3 * len(conf["columns"]) + 2.5, 0.8 * len(conf["rows"]) + 1.8))
    image = ax.imshow(grid, cmap="Blues", vmin=0)
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color=_text_colour(image.cmap(image.norm(n))))
    bar = fig.colorbar(image, ax=ax, label="prompts")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 ticks
    ax.set_xticks(range(len(conf["columns"])), conf["columns"])
    ax.set_yticks(range(len(conf["rows"])), conf["rows"])
    ax.set_xlabel("event found near the tag")
    ax.set_ylabel("tag in the prompt")
    ax.set_title("tuned model, free running")
    fig.tight_layout()
    return fig


def render_plots(report: dict) -> dict[str, bytes]:
    """File name -> PNG bytes; the free-running figures only when that check ran."""
    import matplotlib

    matplotlib.use("Agg")
    out = {"reliance.png": _png(reliance_figure(report))}
    free = report["details"].get("free")
    if free and free.get("tuned"):
        out["free_running.png"] = _png(free_running_figure(report))
        out["confusion.png"] = _png(confusion_figure(report))
    return out
