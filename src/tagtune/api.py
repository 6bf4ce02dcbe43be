"""The public calls ``tagtune.prepare/export/evaluate``, one per stage (``tagtune.train`` is the training
package's own ``train``, which takes plain values).

Each call imports its stage when called, so ``import tagtune`` stays light, and the package root
(``__init__.py``) names these lazily instead of importing the stages itself.
"""

from __future__ import annotations

from pathlib import Path


def prepare(model_dir: str | Path, data: str | Path, out_dir: str | Path, *, tags: str | list[str] = "auto",
            **options) -> dict | None:
    """Prepare a tagged corpus for a base model folder; returns the data folder's manifest.

    ``data`` is any corpus ``tagtune prepare`` reads (parquet/arrow, LJSpeech, CSV/JSONL manifest, a folder
    with metadata.jsonl, or a Hugging Face dataset name with ``kind="hf"``); ``tags`` is "auto" or a list
    such as ``["<laughs>", "<sighs>"]``. ``options``: see ``tagtune.data.for_model.prepare_for_model``.
    """
    from tagtune.data.for_model import prepare_for_model

    return prepare_for_model(model_dir, str(data), out_dir, tags=tags, **options)


def export(run_dir: str | Path, out_dir: str | Path, **options) -> Path:
    """A training run's weights as a model folder the official loader accepts (``adapter_only=True``: a PEFT
    adapter folder instead); ``options``: ``dtype``, ``which`` ("best"/"last"), ``overwrite``."""
    from tagtune.export import export as export_run

    return export_run(run_dir, out_dir, **options)


def evaluate(model_dir: str | Path | None, data_dir: str | Path, out_dir: str | Path, **options) -> dict:
    """Tag reliance, forgetting and free-running event numbers of a tuned model against its base; writes
    report.json, report.md and plots to ``out_dir``. ``options``: ``base_dir``, ``adapter``, ``n_free`` ..."""
    from tagtune.evaluate import evaluate as run_evaluation

    return run_evaluation(model_dir, data_dir, out_dir, **options)
