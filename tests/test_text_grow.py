"""New text rows for tag tokens: old rows untouched, spare row last, both initialisations."""

from __future__ import annotations

import pytest
import torch

from tagtune.tags import add_tag_pieces
from tagtune.tags.rows import grow_text_rows
from tagtune.text import TextTokenizer

N, D = 10, 16  # tokenizer pieces, model width; the tables have N + 1 rows
KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")


@pytest.fixture()
def state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "text_embedding.weight": torch.randn(N + 1, D, generator=g) + 0.3,
        "text_head.weight": torch.randn(N + 1, D, generator=g),
        "text_head.bias": torch.randn(N + 1, generator=g),
        "mel_head.bias": torch.zeros(3),
    }


@pytest.mark.parametrize("init", ["mean", "words"])
def test_old_rows_identical_and_spare_row_last(state_dict, init):
    before = {k: v.clone() for k, v in state_dict.items()}
    grown = grow_text_rows(state_dict, 3, N, init=init, tags=["<laughs>", "<a b>", "<sighs>"],
                           word_ids=lambda word: [len(word) % N, 1])
    for key in KEYS:
        assert grown[key].shape[0] == N + 1 + 3
        assert torch.equal(grown[key][:N], before[key][:N])
        assert torch.equal(grown[key][-1], before[key][N])  # the spare row
        assert torch.equal(state_dict[key], before[key])  # input untouched
    assert grown["mel_head.bias"] is state_dict["mel_head.bias"]


def test_mean_init_rows_have_typical_norm_and_differ(state_dict):
    grown = grow_text_rows(state_dict, 4, N, init="mean", seed=7)
    new = grown["text_embedding.weight"][N:N + 4]  # (4, D)
    old = state_dict["text_embedding.weight"][:N]
    torch.testing.assert_close(new.norm(dim=1), old.norm(dim=1).median().expand(4))
    mean_dir = old.mean(0) / old.mean(0).norm()
    cosines = new @ mean_dir / new.norm(dim=1)
    assert bool((cosines > 0.95).all()) and cosines.max() < 1 - 1e-6  # mean direction, jittered
    assert not torch.equal(new[0], new[1])
    torch.testing.assert_close(grown["text_head.weight"][N:N + 4], old.new_zeros(4, D)
                               + state_dict["text_head.weight"][:N].mean(0))
    torch.testing.assert_close(grown["text_head.bias"][N:N + 4], state_dict["text_head.bias"][:N].mean().expand(4))
    again = grow_text_rows(state_dict, 4, N, init="mean", seed=7)
    assert torch.equal(again["text_embedding.weight"], grown["text_embedding.weight"])


def test_words_init_is_the_mean_of_the_word_pieces(state_dict):
    pieces = {"LAUGHS": [3, 4], "CLEARS THROAT": [5, 6, 9]}
    grown = grow_text_rows(state_dict, 2, N, init="words", tags=["<laughs>", "<clears throat>"],
                           word_ids=pieces.__getitem__)
    for row, ids in enumerate(pieces.values()):
        for key in KEYS:
            torch.testing.assert_close(grown[key][N + row], state_dict[key][ids].mean(0))


def test_words_init_needs_a_callable(state_dict):
    with pytest.raises(ValueError, match="word_ids callable"):
        grow_text_rows(state_dict, 1, N, init="words", tags=["<laughs>"])
    with pytest.raises(ValueError, match="no piece ids"):
        grow_text_rows(state_dict, 1, N, init="words", tags=["<laughs>"], word_ids=lambda w: [])


def test_shape_errors_name_key_and_shape(state_dict):
    with pytest.raises(ValueError, match=r"text_embedding.weight: shape \(11, 16\) has 11 rows, expected"):
        grow_text_rows(state_dict, 1, N + 1)
    with pytest.raises(KeyError, match="text_head.bias"):
        grow_text_rows({k: v for k, v in state_dict.items() if k != "text_head.bias"}, 1, N)


def test_dtype_is_kept(state_dict):
    half = {k: v.to(torch.bfloat16) for k, v in state_dict.items()}
    grown = grow_text_rows(half, 2, N)
    assert all(grown[k].dtype == torch.bfloat16 for k in KEYS)


def test_base_checkpoint_rows_line_up_with_extended_tokenizer(shipped_base):
    sd = torch.load(shipped_base / "gpt.pth", map_location="cpu", weights_only=True)
    sd = sd.get("model", sd)
    data, ids = add_tag_pieces(shipped_base / "bpe.model", ["<laughs>", "<sighs>"])
    tok = TextTokenizer(data, normalizer=None)
    base = sd["text_embedding.weight"].shape[0] - 1  # = number_text_tokens
    assert base == TextTokenizer(shipped_base / "bpe.model", normalizer=None).vocab_size
    grown = grow_text_rows(sd, len(ids), base, init="words", tags=list(ids), word_ids=tok.word_piece_ids)
    assert grown["text_embedding.weight"].shape[0] == tok.vocab_size + 1  # spare row kept
    assert list(ids.values()) == [base, base + 1]  # tag id == its new row
    laughs = tok.word_piece_ids("LAUGHS")
    row = grown["text_embedding.weight"][ids["<laughs>"]]
    torch.testing.assert_close(row, sd["text_embedding.weight"][laughs].mean(0))
