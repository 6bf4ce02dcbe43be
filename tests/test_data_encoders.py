"""The real text encoder (tag-extended sentencepiece) behind the data pipeline's TextEncoder protocol."""

from __future__ import annotations

from tagtune.data.encode import Rejection, encode_text
from tagtune.data.encoders import TokenizerTextEncoder
from tagtune.tags.pieces import add_tag_pieces
from tagtune.tags.vocab import TagSet
from tagtune.text.tokenizer import TextTokenizer


def test_official_ids_and_tags(fixture_dir, expected):
    bpe = fixture_dir / "checkpoint" / "bpe.model"
    plain = TokenizerTextEncoder(TextTokenizer(bpe, normalizer=None))
    enc = plain("Hello, World! This is IndexTTS speaking.")
    assert enc.ids == expected["text_ids_0"][0].tolist() and enc.tags == [] and not enc.has_unk

    model, ids = add_tag_pieces(bpe, ["<laughs>", "<giggles>"])
    tagged = TokenizerTextEncoder(TextTokenizer(model, TagSet(tags=["<laughs>", "<giggles>"]), normalizer=None))
    enc = tagged("<giggles> Well <laughs> ha")
    assert enc.tags == ["<giggles>", "<laughs>"] and ids["<giggles>"] in enc.ids and not enc.has_unk
    assert tagged.identity != plain.identity
    # a tag the tag set does not know must reject the clip, not stop the run
    bad = encode_text("ha <coughs> ha", tagged, max_text_tokens=600)
    assert isinstance(bad, Rejection) and bad.reason == "unencodable_text"
