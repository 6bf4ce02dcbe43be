"""New rows for new tag tokens in the GPT's text tables (tensor level; no files).

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tagtune.tags.vocab import tag_words

EMBEDDING_KEY = "text_embedding.weight"
HEAD_WEIGHT_KEY = "text_head.weight"
HEAD_BIAS_KEY = "text_head.bias"
TEXT_KEYS = (EMBEDDING_KEY, HEAD_WEIGHT_KEY, HEAD_BIAS_KEY)
INITS = ("mean", "words", "plain")
MEAN_NOISE = 0.1  # noise norm relative to the unit mean direction, so tags start distinguishable


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
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
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
