"""tagtune: teach IndexTTS 1.0/1.5 new expressive tags.

The few calls a notebook needs, in the order data flows:

    import tagtune
    tagtune.prepare("IndexTTS-1.5", "elise/", "data/elise")          # corpus -> prepared data folder
    tagtune.train("data/elise", "runs/elise")                         # LoRA + tag rows (shipped recipe)
    tagtune.export("runs/elise", "IndexTTS-1.5-tags")                 # official layout (or adapter_only=True)
    tts = tagtune.TTS.load("IndexTTS-1.5-tags")                       # load once, synthesise many
    out = tts.synthesize("Well <sighs> let's start over.", "voice.wav", seed=1)
    tagtune.evaluate("IndexTTS-1.5-tags", "data/elise", "report/", base_dir="IndexTTS-1.5")

``tagtune.load_model(folder, adapter=None)`` opens a model folder (and an adapter) as its parts: config,
tokenizer, tag set, and the networks, each built on first use. ``tagtune.grow_for_adapter(gpt, adapter_dir)``
gives a base GPT (the official ``UnifiedVoice`` too) an exported adapter's tag rows, for stock
``peft.PeftModel.from_pretrained``. Importing tagtune loads none of this: each
name is imported when first used.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tagtune.loaders import LoadedModel, load_model
    from tagtune.synthesis import TTS, Synthesis
    from tagtune.tags.rows import grow_for_adapter

# public name -> module that defines it (imported on first use)
_LAZY = {
    "load_model": "tagtune.loaders",
    "LoadedModel": "tagtune.loaders",
    "TTS": "tagtune.synthesis",
    "Synthesis": "tagtune.synthesis",
    "UserError": "tagtune.errors",
    "grow_for_adapter": "tagtune.tags.rows",
}

__all__ = ["TTS", "LoadedModel", "Synthesis", "UserError", "evaluate", "export", "grow_for_adapter", "load_model",
           "prepare", "train", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tagtune' has no attribute {name!r}")


def prepare(model_dir: str | Path, data: str | Path, out_dir: str | Path, *, tags: str | list[str] = "auto",
            **options) -> dict | None:
    """Prepare a tagged corpus for a base model folder; returns the data folder's manifest.

    ``data`` is any corpus ``tagtune prepare`` reads (parquet/arrow, LJSpeech, CSV/JSONL manifest, a folder
    with metadata.jsonl, or a Hugging Face dataset name with ``kind="hf"``); ``tags`` is "auto" or a list
    such as ``["<laughs>", "<sighs>"]``. ``options``: see ``tagtune.data.for_model.prepare_for_model``.
    """
    from tagtune.data.for_model import prepare_for_model

    return prepare_for_model(model_dir, str(data), out_dir, tags=tags, **options)


def train(data_dir: str | Path, out_dir: str | Path, config: Any = None, *, resume: bool = False, **overrides):
    """LoRA-train the base model of a prepared data folder on its tags; returns the run's summary.

    ``config``: a ``TrainConfig``, the path of a YAML recipe, or None for the shipped ``configs/lora.yaml``.
    ``overrides``: ``max_steps``, ``epochs``, ``batch_size``, ``lr``, ``rank``, ``seed``, ``neutral_steps``.
    """
    from tagtune.folders import shipped_recipe
    from tagtune.train import TrainConfig
    from tagtune.train import train as run_training

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_yaml(config if config is not None else shipped_recipe())
    return run_training(data_dir, out_dir, config.with_overrides(**overrides), resume=resume)


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


class _PublicFace(types.ModuleType):
    """The package module, keeping its public functions when a stage module of the same name is imported.

    ``train``, ``export`` and ``evaluate`` name both a call of the public face and a stage package or module;
    importing ``tagtune.train`` would otherwise rebind ``tagtune.train`` to the package (Python sets a parent
    attribute for every imported submodule). The stage modules stay reachable as ``from tagtune.train import
    ...`` and through ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC_CALLS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_PUBLIC_CALLS = ("prepare", "train", "export", "evaluate")
sys.modules[__name__].__class__ = _PublicFace
