"""Judge models from the Hugging Face hub or a local folder, loaded the way transformers loads them.

A name is a hub id (downloaded once into the Hugging Face cache; ``HF_HUB_OFFLINE=1`` reads only the cache)
or a local folder written by ``save_pretrained``. A model that cannot be found is one clear error naming it
and saying how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tagtune.errors import UserError

DEFAULT_EVENT_MODEL = "MIT/ast-finetuned-audioset-10-10-0.4593"
DEFAULT_ASR_MODEL = "openai/whisper-large-v3-turbo"
DEFAULT_SPEAKER_MODEL = "microsoft/wavlm-base-plus-sv"


class JudgeModelError(UserError):
    """A judge model that is missing, unreadable or of the wrong kind."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def missing_model_message(what: str, name: str, cause: str) -> str:
    """The message for a judge model that could not be loaded: which one, why, and how to get it."""
    if Path(name).expanduser().is_dir() or name.startswith((".", "/", "~")):
        return f"the {what} model folder {name} could not be loaded ({cause}); pass a folder written by " \
               "save_pretrained, or a hub id"
    where = " (HF_HUB_OFFLINE is set: only the local cache is read)" if _offline() else ""
    return (f"the {what} model {name!r} is not available{where}: {cause}. Get it once with "
            f"`huggingface-cli download {name}` on a machine with internet (it lands in the Hugging Face cache), "
            "or pass a local folder")


def _local_source(name: str) -> str:
    """A folder for ``name``: the folder itself, or, offline, the hub cache's snapshot of the id.

    Offline is decided here, per call, from the environment: huggingface_hub reads ``HF_HUB_OFFLINE`` once at
    import, so a process that imported it earlier would otherwise still try the network (and retry for
    seconds) before failing.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder)
    if _offline():
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)  # raises (OSError/ValueError) when not cached
    return name


def load_pretrained(what: str, name: str, load: Callable[[str], object]):
    """``load(name)`` (a ``from_pretrained``); a missing or unreadable model becomes a JudgeModelError."""
    try:
        return load(_local_source(name))
    except (OSError, ValueError, KeyError) as e:  # missing repo or file, offline, not this kind of model
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JudgeModelError(missing_model_message(what, name, cause[:300])) from None
