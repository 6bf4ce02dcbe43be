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
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tagtune.api import evaluate, export, prepare
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
    # the public calls (api.py, and training's own ``train``, which takes plain values): imported on first use
    "prepare": "tagtune.api",
    "train": "tagtune.train",
    "export": "tagtune.api",
    "evaluate": "tagtune.api",
}

__all__ = ["TTS", "LoadedModel", "Synthesis", "UserError", "evaluate", "export", "grow_for_adapter", "load_model",
           "prepare", "train", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tagtune' has no attribute {name!r}")


class _PublicFace(types.ModuleType):
    """The package module, keeping its public functions when a stage module of the same name is imported.

    ``train``, ``export`` and ``evaluate`` name both a call of the public face and a stage package or module;
    importing the stage package would otherwise rebind the attribute to that package (Python sets a parent
    attribute for every imported submodule). The stage modules stay reachable by their dotted names and
    through ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC_CALLS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_PUBLIC_CALLS = ("prepare", "train", "export", "evaluate")
sys.modules[__name__].__class__ = _PublicFace
