"""Extending bpe.model with tag pieces, and tokenising tagged text with the extended model."""

from __future__ import annotations

import json

import pytest

from tagtune.text import TextNormalizer, TextTokenizer, TokenizerError

from tagtune.tags import TagSet, add_tag_pieces, extend_model_file
from tagtune.text.sentences import split_sentences

BASE_VOCAB = 320
SPACE_ID = 30  # "▁" in the fixture's bpe.model
UNK_ID = 2
FOUR = ["<laughs>", "<giggles>", "<sighs>", "<chuckles>"]


@pytest.fixture(scope="module")
def bpe_path(fixture_dir):
    return fixture_dir / "checkpoint" / "bpe.model"


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return json.loads((fixture_dir / "expected_text.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def extended(bpe_path):
    tags = FOUR + ["<laughs nervously>"]
    data, ids = add_tag_pieces(bpe_path, tags)
    tagset = TagSet(tags, multiword="own").with_token_ids(ids)
    return data, tagset


@pytest.fixture(scope="module")
def tok(extended):
    pytest.importorskip("wetext")
    data, tagset = extended
    return TextTokenizer(data, tagset=tagset, normalizer=TextNormalizer(backend="wetext"))


def test_tags_get_contiguous_ids_after_the_base_vocabulary(extended):
    _, tagset = extended
    assert tagset.token_ids == {t: BASE_VOCAB + i for i, t in enumerate(tagset.tags)}


def test_old_pieces_keep_their_ids_and_bytes(extended, golden, bpe_path):
    data, tagset = extended
    raw = TextTokenizer(data, normalizer=None)
    assert raw.vocab_size == BASE_VOCAB + 5
    assert raw.convert_ids_to_tokens(list(range(BASE_VOCAB))) == golden["pieces"]
    assert raw.convert_ids_to_tokens(list(range(BASE_VOCAB, BASE_VOCAB + 5))) == [
        "<LAUGHS>", "<GIGGLES>", "<SIGHS>", "<CHUCKLES>", "<LAUGHS▁NERVOUSLY>"]
    assert data.startswith(bpe_path.read_bytes())


def test_extending_twice_appends_only_new_tags(extended):
    data, tagset = extended
    again, ids = add_tag_pieces(data, ["<SIGH>", "<whispers>", "<laughs>"])
    assert ids == {"<sigh>": BASE_VOCAB + 5, "<whispers>": BASE_VOCAB + 6, "<laughs>": BASE_VOCAB}
    third, ids3 = add_tag_pieces(again, ["<whispers>"])
    assert third == again and ids3 == {"<whispers>": BASE_VOCAB + 6}


def test_extend_model_file_writes_atomically(bpe_path, tmp_path):
    dst = tmp_path / "bpe.model"
    assert extend_model_file(bpe_path, dst, ["<laughs>"]) == {"<laughs>": BASE_VOCAB}
    assert extend_model_file(dst, dst, ["<sighs>"]) == {"<sighs>": BASE_VOCAB + 1}  # in place
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.model"]  # no temp file left behind
    assert TextTokenizer(dst, normalizer=None).vocab_size == BASE_VOCAB + 2


@pytest.mark.parametrize("i", [0, 1, 2, 4, 5, 6])
def test_untagged_texts_keep_official_ids_with_extended_model(tok, golden, i):
    rec = golden["texts"][i]
    assert tok.encode(rec["text"]) == rec["ids_norm"]


@pytest.mark.parametrize("text, tags", [
    ("<laughs>", ["<laughs>"]),
    ("<GIGGLES> Well, that's funny... <laugh> Ha!", ["<giggles>", "<laughs>"]),  # fixture text 3
    ("你好<giggles>世界。", ["<giggles>"]),
    ("我有3只猫 <SIGH>，好的。", ["<sighs>"]),
    ("IndexTTS 是一个<chuckle>模型, it's 25 <Laughs Nervously>!", ["<chuckles>", "<laughs nervously>"]),
    ("HA<laughs>HA [laughs] (laughs)", ["<laughs>"]),
])
def test_each_tag_encodes_to_one_id(tok, extended, text, tags):
    _, tagset = extended
    ids = tok.encode(text)
    tag_ids = [i for i in ids if i >= BASE_VOCAB]
    assert tag_ids == [tagset.token_ids[t] for t in tags]
    pieces = tok.tokenize(text)
    assert [p for p in pieces if p.startswith("<") and len(p) > 1] == [tagset.pieces[tagset.tags.index(t)]
                                                                        for t in tags]


def test_fixture_tag_text_with_tags(tok, golden):
    # Official: "<GIGGLES>" falls apart into 8 pieces with two <unk>s; with the tag set, two ids.
    assert tok.encode(golden["texts"][3]["text"]) == [
        SPACE_ID, BASE_VOCAB + 1, 90, 186, 34, 121, 138, 94, 131, 51, 49, 35, 101, SPACE_ID, BASE_VOCAB, 261, 55]


def test_unknown_tag_at_synthesis(tok, extended):
    data, tagset = extended
    with pytest.raises(Exception, match="unknown tag <whistles>; known tags: <chuckles>, <giggles>"):
        tok.encode("hi <whistles>")
    lenient = TextTokenizer(data, tagset=tagset, normalizer=None, unknown_tags="drop")
    with pytest.warns(UserWarning, match="whistles"):
        assert lenient.encode("<whistles> <laughs>") == [SPACE_ID, BASE_VOCAB]


def test_tokenizer_rejects_a_model_without_the_tag_pieces(bpe_path, extended):
    with pytest.raises(TokenizerError, match="not in the tokenizer model"):
        TextTokenizer(bpe_path, tagset=TagSet(FOUR), normalizer=None)
    data, _ = extended
    wrong = TagSet(FOUR, token_ids={"<laughs>": 12000})
    with pytest.raises(TokenizerError, match="says id 12000"):
        TextTokenizer(data, tagset=wrong, normalizer=None)


def test_word_piece_ids_spell_out_the_tag(tok):
    assert tok.convert_ids_to_tokens(tok.word_piece_ids("LAUGHS")) == ["LA", "U", "GH", "S"]


def test_lone_tag_chunks_stay_with_their_sentence():
    pieces = ["▁HE", "LL", "O", "!", "▁", "<LAUGHS>", "▁", "<SIGHS>"]
    assert split_sentences(pieces, 4) == [pieces[:4], pieces[4:]]  # official packing isolates them
    assert split_sentences(pieces, 4, tag_pieces={"<LAUGHS>", "<SIGHS>"}) == [pieces]
    leading = ["▁", "<LAUGHS>", "▁", "<SIGHS>", "▁HE", "LL", "O", "!"]  # the hard cut isolates the tags
    with pytest.warns(RuntimeWarning, match="exceeds 4"):
        assert split_sentences(leading, 4) == [leading[:4], leading[4:]]
        assert split_sentences(leading, 4, tag_pieces={"<LAUGHS>", "<SIGHS>"}) == [leading]


def test_tagged_text_splits_like_official_around_tags(tok):
    pieces = tok.tokenize("<laughs> Ha! Well. <sighs>")
    want = [["▁", "<LAUGHS>", "▁HA", "!"], ["▁WE", "LL", ".", "▁", "<SIGHS>"]]
    assert tok.split_sentences(pieces, 4) == want


def test_from_model_dir_picks_up_the_tags_file(bpe_path, tmp_path):
    base = TextTokenizer.from_model_dir(bpe_path.parent, normalizer=None)
    assert base.vocab_size == BASE_VOCAB and base.tag_ids == {}
    ids = extend_model_file(bpe_path, tmp_path / "bpe.model", FOUR)
    TagSet(FOUR).with_token_ids(ids).save(tmp_path / "tags.json")
    tok = TextTokenizer.from_model_dir(tmp_path, normalizer=None)
    assert tok.tag_ids == ids and tok.encode("<LAUGH>") == [SPACE_ID, BASE_VOCAB]
