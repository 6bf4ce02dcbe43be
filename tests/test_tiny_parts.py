"""Parts of the tiny-model build: k-means with the pinned silence code, the tokenizer layout, lr schedules."""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch

from tagtune.tiny.bpe import USER_SYMBOLS, check_layout, generator_cjk, official_text, train_bpe
from tagtune.tiny.kmeans import SILENCE_CODE, kmeans, place_silence
from tagtune.tiny.pretrain import PretrainSettings, lr_at

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore!",
    "Please don't open the window in the attic.", "We can go home now, it's late.",
    "My friend Sam fixed the silly kitchen at the market.", "Is that your blanket in the park?",
]


def test_kmeans_finds_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=gen) for c in centres])
    found = kmeans(x, 3, seed=1)
    nearest = torch.cdist(centres, found).argmin(1)  # the found centroid of each true centre
    assert sorted(nearest.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found[nearest], centres, atol=0.05, rtol=0)


def test_kmeans_is_seeded():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(kmeans(x, 8, seed=5), kmeans(x, 8, seed=5))


def test_place_silence_pins_code_52_and_keeps_the_other_centroids():
    gen = torch.Generator().manual_seed(0)
    centroids = torch.randn(64, 3, generator=gen)
    silence = centroids[10] + 0.01  # centroid 10 is the one nearest to silence
    out = place_silence(centroids, silence)
    assert torch.equal(out[SILENCE_CODE], silence)
    assert torch.equal(out[10], centroids[SILENCE_CODE])  # the displaced centroid moved, not lost
    untouched = [i for i in range(64) if i not in (10, SILENCE_CODE)]
    assert torch.equal(out[untouched], centroids[untouched])


def test_bpe_official_layout_and_reproducible():
    lines = [official_text(s) for s in SENTENCES * 20]
    assert lines[0] == "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG."
    model = train_bpe(lines, vocab_size=160)  # room for the CJK symbols and the letters
    assert model == train_bpe(lines, vocab_size=160)
    check_layout(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert [sp.IdToPiece(i) for i in range(3 + len(USER_SYMBOLS))] == ["<s>", "</s>", "<unk>", *USER_SYMBOLS]
    assert sp.PieceToId("▁") > 2 + len(USER_SYMBOLS)
    # a CJK character costs the word-boundary piece plus the character, as in the official model
    assert sp.Encode(official_text("我 OK"), out_type=str)[:2] == ["▁", "我"]


def test_every_generator_cjk_character_is_a_symbol():
    """Mandarin corpus text never needs <unk>, whichever clips a seed draws: each character has a piece."""
    chars = set(generator_cjk())
    assert len(chars) > 50 and chars <= set(USER_SYMBOLS)
    assert "妹" in chars and list(USER_SYMBOLS) == sorted(USER_SYMBOLS)
    model = train_bpe([official_text(s) for s in SENTENCES * 20], vocab_size=160)
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert sp.unk_id() not in sp.Encode(official_text("我妹妹今天在公园里看到了一只小狗。"), out_type=int)


def test_check_layout_rejects_a_model_without_the_symbols():
    lines = [official_text(s) for s in SENTENCES * 20]
    model = train_bpe(lines, vocab_size=80, user_symbols=())
    with pytest.raises(ValueError, match="user-defined symbols"):
        check_layout(model)


def test_lr_schedule_warms_up_and_decays():
    s = PretrainSettings(steps=200, lr=1e-3)
    assert lr_at(0, s) == pytest.approx(1e-3 / 40)
    assert lr_at(39, s) == pytest.approx(1e-3)
    assert lr_at(199, s) == pytest.approx(1e-4, rel=1e-3)
