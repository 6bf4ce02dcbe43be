"""PNG figures of the report: reliance gaps, free-running rates, the confusion matrix."""

from __future__ import annotations

import io

from tagtune.evaluate.report import MAX_FALSE_EVENT_RATE, MIN_RELIANCE_GAP, MIN_TAG_HIT_RATE

MODELS = ("tuned", "base")
BAR_WIDTH = 0.38


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _bars(ax, tags: list[str], series: dict[str, list], ylabel: str, line: float | None) -> None:
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * BAR_WIDTH for i in range(len(tags))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], BAR_WIDTH, label=name)
    if line is not None:
        ax.axhline(line, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(tags)), tags)
    ax.set_ylabel(ylabel)
    ax.legend()


def reliance_figure(report: dict) -> bytes:
    import matplotlib.pyplot as plt

    tags = list(report["tags"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("reliance_gap", "wrong_tag_gap"), ("tag removed", "wrong tag")):
        _bars(ax, tags, {m: [report["tags"][t][key][m] for t in tags] for m in MODELS}, "nats per event",
              MIN_RELIANCE_GAP)
        ax.set_title(f"NLL gain of the true tag over {title}")
    return _png(fig)


def free_running_figure(report: dict) -> bytes:
    import matplotlib.pyplot as plt

    tags = list(report["tags"])
    free = report["details"].get("free") or {}
    series = {name: [((free.get(name) or {}).get("per_tag", {}).get(t) or {}).get("hit_rate") for t in tags]
              for name in ("tuned", "base", "real_clips") if free.get(name)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _bars(axes[0], tags, series, "hit rate", MIN_TAG_HIT_RATE)
    axes[0].set_title("right event near the tag")
    names = list(series)
    axes[1].bar(names, [(free.get(n) or {}).get("false_event_rate") or 0.0 for n in names])
    axes[1].axhline(MAX_FALSE_EVENT_RATE, color="k", linestyle="--", linewidth=1)
    axes[1].set_title("false events on tag-free prompts")
    return _png(fig)


def confusion_figure(report: dict) -> bytes:
    import matplotlib.pyplot as plt

    conf = report["details"]["free"]["tuned"]["confusion"]
    grid = [[conf["counts"][r][c] for c in conf["columns"]] for r in conf["rows"]]
    fig, ax = plt.subplots(figsize=(1.3 * len(conf["columns"]) + 1.5, 0.8 * len(conf["rows"]) + 1.5))
    ax.imshow(grid, cmap="Blues")
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center")
    ax.set_xticks(range(len(conf["columns"])), conf["columns"])
    ax.set_yticks(range(len(conf["rows"])), conf["rows"])
    ax.set_xlabel("event found near the tag")
    ax.set_ylabel("tag in the prompt")
    return _png(fig)


def render_plots(report: dict) -> dict[str, bytes]:
    """File name -> PNG bytes; the free-running figures only when that check ran."""
    import matplotlib

    matplotlib.use("Agg")
    out = {"reliance.png": reliance_figure(report)}
    free = report["details"].get("free")
    if free and free.get("tuned"):
        out["free_running.png"] = free_running_figure(report)
        out["confusion.png"] = confusion_figure(report)
    return out
