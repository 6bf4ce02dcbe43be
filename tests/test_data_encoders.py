"""The real text encoder (tag-extended sentencepiece) behind the data pipeline's TextEncoder protocol."""

from __future__ import annotations

from tagtune.data.encode import Rejection, encode_text
from tagtune.data.encoders import TokenizerTextEncoder
from tagtune.tags.pieces import add_tag_pieces
from tagtune.tags.vocab import TagSet
from tagtune.text.tokenizer import TextTokenizer

TEXT = "Hello, World! This is IndexTTS speaking."


def test_official_ids(fixture_dir, expected):
    plain = TokenizerTextEncoder(TextTokenizer(fixture_dir / "checkpoint" / "bpe.model", normalizer=None))
    assert plain(TEXT).ids == expected["text_ids_0"][0].tolist()


def test_ids_and_tags(shipped_base):
    bpe = shipped_base / "bpe.model"
    plain = TokenizerTextEncoder(TextTokenizer(bpe, normalizer=None))
    enc = plain(TEXT)
    assert enc.ids == TextTokenizer(bpe, normalizer=None).encode(TEXT) and enc.tags == [] and not enc.has_unk

    model, ids = add_tag_pieces(bpe, ["<laughs>", "<giggles>"])
    tagged = TokenizerTextEncoder(TextTokenizer(model, TagSet(tags=["<laughs>", "<giggles>"]), normalizer=None))
    enc = tagged("<giggles> Well <laughs> ha")
    assert enc.tags == ["<giggles>", "<laughs>"] and ids["<giggles>"] in enc.ids and not enc.has_unk
    assert tagged.identity != plain.identity
    # a tag the tag set does not know must reject the clip, not stop the run
    bad = encode_text("ha <coughs> ha", tagged, max_text_tokens=600)
    assert isinstance(bad, Rejection) and bad.reason == "unencodable_text"


def test_encoders_run_where_devices_chooses(monkeypatch):
    """With no device named, the clip encoder takes tagtune.devices' choice, the one "auto" means everywhere."""
    import torch

    from tagtune import devices
    from tagtune.data.encoders import dvae_clip_encoder

    monkeypatch.setattr(devices, "best_device", lambda: torch.device("meta"))
    encoder = dvae_clip_encoder(torch.nn.Linear(2, 2))
    assert encoder.device == torch.device("meta") and encoder.dvae.weight.device.type == "meta"
