"""The GPT's text-table rows of new tag tokens: how they start, how a base model grows them, and where
forward reads them.

The text tables have ``number_text_tokens + 1`` rows: one per tokenizer piece plus a spare last row.
New rows go in BEFORE the spare row, so old token k keeps row k, new tag i gets row
``number_text_tokens + i`` (= its sentencepiece id after ``add_tag_pieces``) and the spare row stays last.
Getting this wrong silently scrambles the new tokens.

Initialisations:
  "mean":  embedding = direction of the mean old row plus small noise, scaled to the median old-row norm
           (a plain mean is much shorter than real rows); head = mean old weight row and mean old bias.
  "plain": embedding = the plain mean old row plus small noise at the same relative size (~1/8 of a real
           row's norm on the shipped tiny base): a short row barely perturbs the base before training, and
           Adam grows it within a few steps; head as for "mean".
  "words": embedding, head row and bias = means over the pieces of the tag's spelled-out words
           (``<laughs>`` → pieces of "LAUGHS"); needs ``tags`` and a ``word_ids`` callable.
  "neutral": one row shared by every tag, fitted on the base so that an untrained tag reads as absent
           (``tags.neutral``); the formula rows it starts from are "plain".

``grow_base`` is the one way a base model folder gets tag rows: training starts from it and evaluation builds
the untrained base with it. ``grow_for_adapter`` gives an already built base GPT (the official ``UnifiedVoice``
too) the rows of an exported adapter, for stock ``peft.PeftModel.from_pretrained``. The rows a run started
from are kept as ``tag_init.safetensors`` (``save_start_rows``) and replace the formula wherever they exist,
so the base is rebuilt exactly as training began.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tagtune.checkpoint import (
    CheckpointError,
    build_gpt,
    load_into,
    read_model_config,
    read_state_dict,
    save_safetensors,
)
from tagtune.errors import UserError
from tagtune.folders import ADAPTER_WEIGHTS_FILE
from tagtune.lora import ADAPTER, module_keys, read_adapter_config, trainable_head
from tagtune.tags.vocab import tag_words

EMBEDDING_KEY = "text_embedding.weight"
HEAD_WEIGHT_KEY = "text_head.weight"
HEAD_BIAS_KEY = "text_head.bias"
TEXT_KEYS = (EMBEDDING_KEY, HEAD_WEIGHT_KEY, HEAD_BIAS_KEY)
EMBEDDING, HEAD = "text_embedding", "text_head"
FORMULA_INITS = ("mean", "words", "plain")  # rows made from the base's own rows, no data needed
TAG_INITS = (*FORMULA_INITS, "neutral")  # every name a recipe's ``lora.tag_init`` may take
MEAN_NOISE = 0.1  # noise norm relative to the unit mean direction, so tags start distinguishable


class TagInitError(UserError, ValueError):
    """Tag rows that cannot be made as asked (unknown init, missing tokenizer, rows of the wrong shape)."""


def _check_shapes(state_dict: dict, number_text_tokens: int) -> None:
    for key in TEXT_KEYS:
        if key not in state_dict:
            raise KeyError(f"state dict has no {key!r}")
        rows = state_dict[key].shape[0]
        if rows != number_text_tokens + 1:
            raise ValueError(f"{key}: shape {tuple(state_dict[key].shape)} has {rows} rows, expected "
                             f"number_text_tokens + 1 = {number_text_tokens + 1}")


def _mean_embedding_rows(old: torch.Tensor, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """(n_new, D) rows along the mean direction, jittered, at the median old-row norm."""
    direction = old.mean(0) / old.mean(0).norm().clamp_min(1e-12)  # (D,)
    noise = torch.randn(n_new, old.shape[1], generator=generator, dtype=old.dtype) / old.shape[1] ** 0.5
    rows = direction + MEAN_NOISE * noise  # (n_new, D)
    return rows / rows.norm(dim=1, keepdim=True) * old.norm(dim=1).median()


def _plain_embedding_rows(old: torch.Tensor, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """(n_new, D) rows: the plain mean old row, jittered by MEAN_NOISE of its own norm."""
    mean = old.mean(0)  # (D,)
    noise = torch.randn(n_new, old.shape[1], generator=generator, dtype=old.dtype) / old.shape[1] ** 0.5
    return mean + MEAN_NOISE * mean.norm() * noise  # (n_new, D)


def _word_rows(tables: list[torch.Tensor], tags: Sequence[str], word_ids) -> list[torch.Tensor]:
    """For each table, (n_new, ...) rows: the mean over each tag's word pieces."""
    picks = []
    for tag in tags:
        ids = list(word_ids(tag_words(tag)))
        if not ids:
            raise ValueError(f"tag {tag}: word_ids({tag_words(tag)!r}) returned no piece ids")
        picks.append(torch.tensor(ids))
    return [torch.stack([t[p].mean(0) for p in picks]) for t in tables]


def _new_rows(old: dict[str, torch.Tensor], n_new: int, init: str, seed: int, tags, word_ids) -> dict:
    if init == "words":
        if tags is None or word_ids is None or len(tags) != n_new:
            raise ValueError(f"init='words' needs {n_new} tags and a word_ids callable (word -> piece ids)")
        return dict(zip(TEXT_KEYS, _word_rows([old[k] for k in TEXT_KEYS], tags, word_ids)))
    generator = torch.Generator().manual_seed(seed)
    embedding_rows = _plain_embedding_rows if init == "plain" else _mean_embedding_rows
    return {
        EMBEDDING_KEY: embedding_rows(old[EMBEDDING_KEY], n_new, generator),
        HEAD_WEIGHT_KEY: old[HEAD_WEIGHT_KEY].mean(0).expand(n_new, -1),
        HEAD_BIAS_KEY: old[HEAD_BIAS_KEY].mean(0).expand(n_new),
    }


def grow_text_rows(
    state_dict: dict[str, torch.Tensor],
    n_new: int,
    number_text_tokens: int,
    init: str = "mean",
    seed: int = 0,
    tags: Sequence[str] | None = None,
    word_ids: Callable[[str], Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """A new state dict whose text embedding/head/bias have ``n_new`` rows inserted before the spare row.

    Other entries are shared with ``state_dict``, which is not modified. ``word_ids`` (for init="words")
    maps a spelled-out word such as "LAUGHS" to piece ids, e.g. ``TextTokenizer.word_piece_ids``.
    """
    if init not in FORMULA_INITS:
        raise TagInitError(f"tag row init must be one of {FORMULA_INITS}, got {init!r}")
    _check_shapes(state_dict, number_text_tokens)
    if n_new <= 0:
        return dict(state_dict)
    # Statistics over the real token rows only: the spare row is never produced by the tokenizer.
    old = {k: state_dict[k][:number_text_tokens].float() for k in TEXT_KEYS}
    new = _new_rows(old, n_new, init, seed, tags, word_ids)
    grown = dict(state_dict)
    for key in TEXT_KEYS:
        table = state_dict[key]  # (N + 1, D) or (N + 1,)
        rows = new[key].to(table.dtype)
        grown[key] = torch.cat([table[:number_text_tokens], rows, table[number_text_tokens:]])
    return grown


# ------------------------------------------------------------------------------ growing a base model


@dataclass(frozen=True)
class TagInit:
    """How new tag rows start: an init name of ``TAG_INITS`` with its seed, or recorded start rows.

    ``tokenizer`` (a ``bpe.model`` path or bytes) is read by the "words" init; ``rows_file`` (a
    ``tag_init.safetensors``) replaces the formula when given. "neutral" grows "plain" rows here: the fit
    that makes them neutral needs training data and runs in training (``tags.neutral``).
    """

    name: str = "mean"
    seed: int = 0
    tokenizer: Path | bytes | None = None
    rows_file: Path | None = None

    def __post_init__(self):
        if self.name not in TAG_INITS:
            raise TagInitError(f"tag row init must be one of {TAG_INITS}, got {self.name!r}")

    @property
    def description(self) -> str:
        return "recorded start rows" if self.rows_file is not None else f"init {self.name}"

    @property
    def formula(self) -> str:
        return "plain" if self.name == "neutral" or self.rows_file is not None else self.name

    def word_ids(self) -> Callable[[str], Sequence[int]] | None:
        if self.formula != "words":
            return None
        if self.tokenizer is None:
            raise TagInitError("tag row init 'words' needs the tag-extended tokenizer (bpe.model)")
        from tagtune.text.tokenizer import TextTokenizer

        return TextTokenizer(self.tokenizer, normalizer=None).word_piece_ids


def grow_state(state: dict[str, torch.Tensor], tag_names: Sequence[str], number_text_tokens: int,
               init: TagInit) -> dict[str, torch.Tensor]:
    """A GPT state dict with one formula row per tag (``init``'s rows file is applied by ``grow_base``)."""
    return grow_text_rows(state, len(tag_names), number_text_tokens, init=init.formula, seed=init.seed,
                          tags=list(tag_names), word_ids=init.word_ids())


def grow_base(base_dir: str | Path, tag_names: Sequence[str], init: TagInit = TagInit(),
              dropout: float | None = None):
    """The base GPT of ``base_dir`` with one new text row per tag, inserted before the spare row.

    Returns ``(gpt, model_config, new_token_ids)`` with the GPT in eval mode on the CPU;
    ``model_config.gpt.number_text_tokens`` counts the tags. An IndexTTS-2 folder gives its UnifiedVoiceV2
    (the same text tables on the shared trunk) and its ``ModelConfigV2``.
    """
    cfg = read_model_config(base_dir)
    path = Path(base_dir) / cfg.gpt_checkpoint
    n_old, n_new = cfg.gpt.number_text_tokens, len(tag_names)
    state = grow_state(read_state_dict(path, "model"), tag_names, n_old, init)
    cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, number_text_tokens=n_old + n_new))
    gpt = build_gpt(cfg.gpt)
    load_into(gpt, state, path)
    if dropout is not None:
        gpt.gpt.set_dropout(dropout)
    new_ids = list(range(n_old, n_old + n_new))
    if init.rows_file is not None:
        set_tag_rows(gpt, new_ids, read_start_rows(init.rows_file, n_new))
    return gpt.eval(), cfg, new_ids


# ---------------------------------------------------------------------- the rows forward reads


def current_tag_rows(gpt: nn.Module, new_token_ids: list[int]) -> dict[str, torch.Tensor]:
    """The rows forward uses for ``new_token_ids``: text embedding (n, D), head weight (n, D), head bias (n,)."""
    ids = torch.tensor(list(new_token_ids), device=next(gpt.parameters()).device)
    head = trainable_head(gpt)
    with torch.no_grad():
        rows = {"text_embedding.weight": gpt.text_embedding(ids), "text_head.weight": head.weight[ids],
                "text_head.bias": head.bias[ids]}
    return {k: v.detach().float().cpu().contiguous() for k, v in rows.items()}


def set_tag_rows(gpt: nn.Module, new_token_ids: list[int], rows: dict[str, torch.Tensor]) -> None:
    """Write ``rows`` (as ``current_tag_rows`` gives them; missing keys stay) where forward reads them.

    With adapters injected the embedding rows live in peft's trainable-token copy, which forward uses
    instead of the base table; both are written so that merging gives the same rows.
    """
    ids = list(new_token_ids)
    with torch.no_grad():
        if "text_embedding.weight" in rows:
            row = rows["text_embedding.weight"]
            emb = gpt.text_embedding
            adapter = getattr(emb, "token_adapter", None)
            table = adapter.base_layer.weight if adapter is not None else emb.weight
            table[ids] = row.to(table)
            if adapter is not None:
                delta = adapter.trainable_tokens_delta[ADAPTER]
                delta.copy_(row.to(delta))
        head = trainable_head(gpt)
        if "text_head.weight" in rows:
            head.weight[ids] = rows["text_head.weight"].to(head.weight)
        if "text_head.bias" in rows:
            head.bias[ids] = rows["text_head.bias"].to(head.bias)


# ------------------------------------------------------------------------------- the rows a run starts from


def save_start_rows(path: Path, rows: dict[str, torch.Tensor], tag_names: list[str], init: str,
                    report: dict | None = None) -> None:
    """Write the untrained tag rows (``current_tag_rows``) with how they were made."""
    meta = {"tags": json.dumps(tag_names), "init": init, "report": json.dumps(report or {})}
    save_safetensors(path, rows, metadata=meta)


def read_start_rows(path: Path, n_tags: int) -> dict[str, torch.Tensor]:
    """Rows written by ``save_start_rows``; checks they hold ``n_tags`` rows of each table."""
    rows = read_state_dict(path)
    for key in TEXT_KEYS:
        if key not in rows or rows[key].shape[0] != n_tags:
            shape = tuple(rows[key].shape) if key in rows else None
            raise CheckpointError(f"{path}: {key} has shape {shape}, expected {n_tags} tag rows")
    return rows


# ------------------------------------------------------------------------- a plain base grown for an adapter


@torch.no_grad()
def grow_for_adapter(gpt: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Give ``gpt`` (an official or a tagtune ``UnifiedVoice`` of the adapter's base) the adapter's text rows.

    ``text_embedding`` and ``text_head`` get the adapter's tag rows inserted before the spare last row, filled
    with the adapter's own values (its trainable-token rows and saved head), and ``number_text_tokens`` is
    updated, so that ``peft.PeftModel.from_pretrained(gpt, adapter_dir)`` loads and ``merge_and_unload()``
    works. Changes ``gpt`` in place and returns it; a model that already has the rows is left as it is.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    state = module_keys(read_state_dict(adapter_dir / ADAPTER_WEIGHTS_FILE))
    head_weight, head_bias = state.get(f"{HEAD}.weight"), state.get(f"{HEAD}.bias")
    embedding, head = getattr(gpt, EMBEDDING, None), getattr(gpt, HEAD, None)
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear) or head.bias is None:
        raise TagInitError(f"grow_for_adapter needs plain {EMBEDDING} (nn.Embedding) and {HEAD} (nn.Linear with bias) "
                           "layers: pass the base UnifiedVoice before any adapter is applied")
    if head_weight is None or head_bias is None:
        raise CheckpointError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: no saved {HEAD}; not a tagtune adapter")
    old_rows, rows = embedding.num_embeddings, head_weight.shape[0]
    if rows == old_rows:
        return gpt
    if rows < old_rows or head_weight.shape[1] != embedding.embedding_dim:
        raise CheckpointError(f"{adapter_dir}: the adapter's {HEAD} is {tuple(head_weight.shape)}, the model's "
                              f"text tables are ({old_rows}, {embedding.embedding_dim}); is this the adapter's base?")
    new_ids = list(range(old_rows - 1, rows - 1))  # tag rows go before the spare last row
    gpt.text_embedding = _grown_embedding(embedding, _new_embedding_rows(config, state, embedding, new_ids))
    gpt.text_head = _grown_head(head, head_weight[new_ids], head_bias[new_ids])
    _set_text_tokens(gpt, rows - 1)
    return gpt


def _new_embedding_rows(config, state: dict, embedding: nn.Embedding, new_ids: list[int]):
    """(n, D) rows for ``new_ids``: the adapter's trainable-token values, else the mean old row."""
    indices = list((config.trainable_token_indices or {}).get(EMBEDDING, []))
    delta = state.get(f"{EMBEDDING}.token_adapter.trainable_tokens_delta")
    mean = embedding.weight[:-1].float().mean(0)  # (D,), over the real token rows
    rows = [delta[indices.index(i)] if delta is not None and i in indices else mean for i in new_ids]
    return torch.stack(rows)


def _insert_before_spare(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([table[:-1], rows.to(table), table[-1:]])


def _grown_embedding(embedding: nn.Embedding, rows: torch.Tensor) -> nn.Embedding:
    weight = _insert_before_spare(embedding.weight, rows)  # (N + n + 1, D)
    grown = nn.Embedding(weight.shape[0], weight.shape[1], device=weight.device, dtype=weight.dtype)
    grown.weight.copy_(weight)
    return grown


def _grown_head(head: nn.Linear, weight_rows: torch.Tensor, bias_rows: torch.Tensor) -> nn.Linear:
    weight = _insert_before_spare(head.weight, weight_rows)  # (N + n + 1, D)
    grown = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    grown.weight.copy_(weight)
    grown.bias.copy_(_insert_before_spare(head.bias, bias_rows))
    return grown


def _set_text_tokens(gpt: nn.Module, number_text_tokens: int) -> None:
    """Record the new vocabulary size where the model keeps it (tagtune: ``cfg``; official: an attribute)."""
    cfg = getattr(gpt, "cfg", None)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "number_text_tokens"):
        gpt.cfg = dataclasses.replace(cfg, number_text_tokens=number_text_tokens)
    if hasattr(gpt, "number_text_tokens"):
        gpt.number_text_tokens = number_text_tokens
