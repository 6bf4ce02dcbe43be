"""The two models an evaluation compares: the tuned one and its base, each with the tag ids it reads.

The tuned model is a model folder (official layout or a tagtune export) or a base folder plus an adapter
folder. The base is a model folder too. When the base does not know the tags (an official checkpoint),
it is grown with the tuned model's tags at the same ids, with the rows training started from: the
``tag_init.safetensors`` a tagtune export carries, or else rows made by ``tag_init`` and its seed (pass the
recipe's). Those tag rows were never trained, so the base measures what an untrained tag does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tagtune.errors import UserError
from tagtune.tags.neutral import START_ROWS_FILE
from tagtune.tags.vocab import SPACE_PIECE, TagSet

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


def _folder_tags(folder: Path) -> TagSet | None:
    from tagtune.checkpoint import read_tags

    data = read_tags(folder)
    return TagSet.from_dict(data) if data else None


def _space_id(folder: Path) -> int | None:
    """Id of the bare word-boundary piece that sentencepiece puts before a tag preceded by a space."""
    from sentencepiece import SentencePieceProcessor

    path = folder / "bpe.model"
    if not path.is_file():
        return None
    sp = SentencePieceProcessor(model_file=str(path))
    piece = sp.PieceToId(SPACE_PIECE)
    return None if piece == sp.unk_id() else piece


def _load_folder(folder: Path, name: str, device) -> tuple[nn.Module, TagSet | None]:
    from tagtune.checkpoint import load_gpt

    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a model folder")
    return load_gpt(folder, device=device).eval(), _folder_tags(folder)


@dataclass(frozen=True)
class TagInit:
    """How the base's untrained tag rows are made: ``text.grow`` init name, its seed and the tokenizer folder
    whose word pieces the "words" init reads."""

    name: str = "mean"
    seed: int = 0
    text_dir: Path | None = None
    rows_file: Path | None = None  # the run's recorded start rows; replace the formula when given

    @property
    def description(self) -> str:
        return "recorded start rows" if self.rows_file is not None else f"init {self.name}"

    def word_ids(self, tags: TagSet):
        if self.name != "words":
            return None
        from tagtune.text.tokenizer import TextTokenizer

        if self.text_dir is None:
            raise EvaluationError("tag_init 'words' needs the tuned model's tokenizer folder")
        return TextTokenizer(self.text_dir / "bpe.model", tags).word_piece_ids


def _grown_base(base_dir: Path, tags: TagSet, device, init: TagInit) -> nn.Module:
    """The base GPT with untrained rows for ``tags`` at the ids the tuned model uses."""
    from tagtune.lora import load_grown_base, set_tag_rows
    from tagtune.tags.neutral import read_start_rows

    formula = "plain" if init.rows_file is not None else init.name
    word_ids = init.word_ids(tags) if formula == "words" else None
    gpt, _, new_ids = load_grown_base(base_dir, list(tags.tags), formula, init.seed, word_ids=word_ids)
    wanted = [tags.token_ids[t] for t in tags.tags]
    if new_ids != wanted:
        raise EvaluationError(f"{base_dir}: growing it with {tags.tags} gives ids {new_ids}, the tuned model "
                              f"reads them at {wanted}; is this the tuned model's base?")
    if init.rows_file is not None:
        set_tag_rows(gpt, new_ids, read_start_rows(init.rows_file, len(new_ids)))
    return gpt.to(device).eval()


def _base_model(base_dir: Path, tags: TagSet, device, init: TagInit) -> EvalModel:
    base_tags = _folder_tags(base_dir)
    if base_tags is None or not base_tags.tags:
        return EvalModel(BASE, _grown_base(base_dir, tags, device, init),
                         f"{base_dir} (tag rows untrained, {init.description})", dict(tags.token_ids),
                         init.description)
    gpt, _ = _load_folder(base_dir, BASE, device)
    if base_tags.token_ids != tags.token_ids:
        raise EvaluationError(f"{base_dir}: its tags {base_tags.token_ids} differ from the tuned model's "
                              f"{tags.token_ids}")
    return EvalModel(BASE, gpt, str(base_dir), dict(base_tags.token_ids))


def load_models(model_dir: str | Path | None, base_dir: str | Path | None = None,
                adapter: str | Path | None = None, device: str | torch.device = "cpu",
                tag_init: str = "mean", tag_seed: int = 0):
    """``(tuned, base or None, tagset, space_id)`` for a model folder, or a base folder plus an adapter.

    ``space_id`` is the tokenizer's bare "▁" piece (None when the tokenizer has none). A base that does
    not know the tags gets the tuned folder's recorded start rows, or else rows made by ``text.grow``'s
    ``tag_init`` with ``tag_seed``, as training did.
    """
    if adapter is not None:
        from tagtune.lora import load_adapter_model

        if base_dir is None:
            raise EvaluationError("an adapter needs its base model folder (--base)")
        gpt, _ = load_adapter_model(base_dir, adapter, device=device)
        text_dir = Path(adapter)
        tags = TagSet.load(text_dir / "tags.json")
        source = f"{base_dir} + adapter {adapter}"
    else:
        if model_dir is None:
            raise EvaluationError("give a model folder (--model) or a base folder plus an adapter")
        text_dir = Path(model_dir)
        gpt, tags = _load_folder(text_dir, TUNED, device)
        source = str(model_dir)
    if tags is None or not tags.tags:
        raise EvaluationError(f"{text_dir}: no tags.json with tags; evaluate a tag-extended model")
    tuned = EvalModel(TUNED, gpt.eval(), source, dict(tags.token_ids))
    rows_file = text_dir / START_ROWS_FILE if (text_dir / START_ROWS_FILE).is_file() else None
    init = TagInit(tag_init, tag_seed, text_dir, rows_file)
    base = _base_model(Path(base_dir), tags, device, init) if base_dir is not None else None
    return tuned, base, tags, _space_id(text_dir)
