"""The two models an evaluation compares: the tuned one and its base, each with the tag ids it reads.

The tuned model is a model folder (official layout or a tagtune export) or a base folder plus an adapter
folder. The base is a model folder too. When the base does not know the tags (an official checkpoint),
it is grown with the tuned model's tags at the same ids by ``tags.rows.grow_base``, as training grew it:
with the ``tag_init.safetensors`` a tagtune export carries, or else rows made by ``tag_init`` and its seed
(pass the recipe's). Those tag rows were never trained, so the base measures what an untrained tag does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tagtune.errors import UserError
from tagtune.folders import ModelFolder
from tagtune.loaders import load_model
from tagtune.tags.rows import TagInit, grow_base
from tagtune.tags.vocab import TagSet, read_tagset

TUNED, BASE = "tuned", "base"


class EvaluationError(UserError):
    """Inputs that cannot be evaluated together (mismatched tags, missing files)."""


@dataclass
class EvalModel:
    """A UnifiedVoice in eval mode and what the metrics need to know about its text side."""

    name: str  # "tuned" or "base"
    gpt: nn.Module
    source: str  # where it came from, for the report
    tag_ids: dict[str, int]  # canonical tag -> text id this model reads it at
    tag_rows: str | None = None  # for a grown base: where its untrained tag rows came from

    @property
    def stop_text(self) -> int:
        return self.gpt.cfg.stop_text_token

    @property
    def stop_mel(self) -> int:
        return self.gpt.cfg.stop_mel_token


def _grown_base(base_dir: Path, tags: TagSet, device, init: TagInit) -> nn.Module:
    """The base GPT with untrained rows for ``tags`` at the ids the tuned model uses."""
    gpt, _, new_ids = grow_base(base_dir, list(tags.tags), init)
    wanted = [tags.token_ids[t] for t in tags.tags]
    if new_ids != wanted:
        raise EvaluationError(f"{base_dir}: growing it with {tags.tags} gives ids {new_ids}, the tuned model "
                              f"reads them at {wanted}; is this the tuned model's base?")
    return gpt.to(device).eval()


def _base_model(base_dir: Path, tags: TagSet, device, init: TagInit) -> EvalModel:
    base_tags = read_tagset(base_dir)
    if base_tags is None or not base_tags.tags:
        return EvalModel(BASE, _grown_base(base_dir, tags, device, init),
                         f"{base_dir} (tag rows untrained, {init.description})", dict(tags.token_ids),
                         init.description)
    if base_tags.token_ids != tags.token_ids:
        raise EvaluationError(f"{base_dir}: its tags {base_tags.token_ids} differ from the tuned model's "
                              f"{tags.token_ids}")
    return EvalModel(BASE, load_model(base_dir, device=device).gpt, str(base_dir), dict(base_tags.token_ids))


def load_models(model_dir: str | Path | None, base_dir: str | Path | None = None,
                adapter: str | Path | None = None, device: str | torch.device = "cpu",
                tag_init: str = "mean", tag_seed: int = 0):
    """``(tuned, base or None, tagset, space_id)`` for a model folder, or a base folder plus an adapter.

    ``space_id`` is the tokenizer's bare "▁" piece written before a tag (None for spaced tag pieces, or when the
    tokenizer has none). A base that does
    not know the tags gets the tuned folder's recorded start rows, or else rows made by ``tag_init`` with
    ``tag_seed``, as training did.
    """
    if adapter is not None and base_dir is None:
        raise EvaluationError("an adapter needs its base model folder")
    if adapter is None and model_dir is None:
        raise EvaluationError("give a model folder, or a base folder plus an adapter")
    tuned_dir = base_dir if adapter is not None else model_dir
    m = load_model(tuned_dir, adapter, device=device)
    tags = m.tagset
    if tags is None or not tags.tags:
        raise EvaluationError(f"{m.text_dir}: no tags.json with tags; evaluate a tag-extended model")
    source = f"{base_dir} + adapter {adapter}" if adapter is not None else str(model_dir)
    tuned = EvalModel(TUNED, m.adapter_gpt.eval(), source, dict(tags.token_ids))
    rows = ModelFolder(m.text_dir).start_rows
    init = TagInit(tag_init, tag_seed, m.tokenizer_path, rows if rows.is_file() else None)
    base = _base_model(Path(base_dir), tags, device, init) if base_dir is not None else None
    return tuned, base, tags, m.tokenizer.tag_space_id
