"""Validation losses and the run's metric files (JSONL, CSV, a loss-curve PNG), mirrored to accelerate's trackers.

Validation reports the loss overall, per tag and on untagged clips. The untagged loss is the forgetting
guard: it is compared with the same loss of the untouched base model, measured before the first step.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import torch

from tagtune.checkpoint import atomic_write_bytes, atomic_write_text
from tagtune.errors import UserError
from tagtune.train.config import LossSettings
from tagtune.train.loss import Batch, RowLosses, combine

log = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"  # accelerate's TensorBoard tracker writes RUN_DIR/tensorboard/


class MetricsError(UserError):
    """A run's metrics file that cannot be continued."""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@torch.no_grad()
def validate(gpt: torch.nn.Module, batches: list[Batch], settings: LossSettings, tag_names: list[str],
             device, autocast, losses: torch.nn.Module | None = None) -> dict[str, float | None]:
    """Mean per-clip losses over the validation batches: ``loss``, ``loss_text``, ``loss_mel``,
    ``loss_untagged``, ``loss_tagged`` and ``loss_tag/<tag>`` (None where no clip qualifies).

    ``losses`` scores a batch (``RowLosses`` of ``gpt`` when not given; ``RowLossesV2`` for IndexTTS-2)."""
    was_training = gpt.training
    gpt.eval()
    scorer = losses if losses is not None else RowLosses(gpt, settings)
    rows: list[tuple[float, float, float, list[str]]] = []
    for batch in batches:
        with autocast():
            text_ce, mel_ce = scorer(batch.to(device))
        total = combine(text_ce, mel_ce, settings)
        rows += [(float(t), float(x), float(m), tags) for t, x, m, tags in zip(total, text_ce, mel_ce, batch.tags)]
    gpt.train(was_training)
    out = {
        "loss": _mean([r[0] for r in rows]),
        "loss_text": _mean([r[1] for r in rows]),
        "loss_mel": _mean([r[2] for r in rows]),
        "loss_untagged": _mean([r[0] for r in rows if not r[3]]),
        "loss_tagged": _mean([r[0] for r in rows if r[3]]),
    }
    for tag in tag_names:
        out[f"loss_tag/{tag}"] = _mean([r[0] for r in rows if tag in r[3]])
    return out


def forgetting(untagged: float | None, base: float | None) -> float | None:
    """Percent by which the tuned untagged loss exceeds the base model's (None when unmeasurable)."""
    if untagged is None or base is None or base <= 0:
        return None
    return 100.0 * (untagged - base) / base


class MetricsLog:
    """Appends records to RUN_DIR/metrics.jsonl and mirrors them to CSV, a PNG and the run's trackers.

    ``tracker`` is anything with accelerate's ``log(values, step=)`` (the run's Accelerator, whose trackers
    (TensorBoard, wandb) were started by the recipe), or None.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, tracker=None):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / METRICS_JSONL
        self.records: list[dict] = []
        self._tracker = tracker
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # lines written after the checkpoint we resume from are replayed by the resumed run
            self.records = [r for r in read_records(self.path) if r["step"] <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **{k: _clean(v) for k, v in values.items()}}
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tracker is not None:
            scalars = {f"{kind}/{k}": v for k, v in record.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            self._tracker.log(scalars, step=step)

    def flush(self) -> None:
        """Rewrite the CSV and the loss-curve PNG from all records."""
        if not self.enabled:
            return
        atomic_write_text(self.run_dir / METRICS_CSV, _csv(self.records))
        png = _plot(self.records)
        if png is not None:
            atomic_write_bytes(self.run_dir / LOSS_PNG, png)

    def close(self) -> None:
        self.flush()


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. Lines are appended, so a kill can cut the last one short: that line is
    dropped (the resumed run writes it again). A bad line before the last is damage, named with its number."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and isinstance(record.get("step"), int)
        except json.JSONDecodeError:
            ok = False
        if ok:
            records.append(record)
        elif n == len(lines):
            log.info("%s: dropped a last line cut short by an interrupted write", path)
        else:
            raise MetricsError(f"{path}: line {n} is not a metrics record; remove the line to resume")
    return records


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _csv(records: list[dict]) -> str:
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _plot(records: list[dict]) -> bytes | None:
    """Train and validation loss against step as PNG bytes (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, key, label in (("train", "loss", "train"), ("val", "loss", "val"),
                             ("val", "loss_untagged", "val untagged"), ("val", "loss_tagged", "val tagged")):
        pts = [(r["step"], r[key]) for r in records if r["kind"] == kind and r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if kind == "val" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (text x w + mel)")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
