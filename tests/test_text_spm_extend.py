"""Extending bpe.model with tag pieces, and tokenising tagged text with the extended model (shipped base's
bpe.model); untagged texts keep the official ids with the extended fixture model."""

from __future__ import annotations

import json

import pytest

from tagtune.tags import TagSet, add_tag_pieces, extend_model_file, extend_tokenizer
from tagtune.text import TextNormalizer, TextTokenizer, TokenizerError
from tagtune.text.sentences import split_sentences

FOUR = ["<laughs>", "<giggles>", "<sighs>", "<chuckles>"]
FIVE = FOUR + ["<laughs nervously>"]
UNTAGGED = ["Hello, World! This is IndexTTS speaking.", "你好，世界。我们在测试语音合成。",
            "IndexTTS 是一个语音合成模型, it's great!", "嗯，好的。", "It costs 25 dollars.", "a"]


def _extend(bpe_path):
    data, ids = add_tag_pieces(bpe_path, FIVE)
    return data, TagSet(FIVE, multiword="own").with_token_ids(ids)


def _wetext_tokenizer(extended):
    pytest.importorskip("wetext")
    data, tagset = extended
    return TextTokenizer(data, tagset=tagset, normalizer=TextNormalizer(backend="wetext"))


@pytest.fixture(scope="module")
def bpe_path(shipped_base):
    return shipped_base / "bpe.model"


@pytest.fixture(scope="module")
def base_tok(bpe_path):
    return TextTokenizer(bpe_path, normalizer=None)


@pytest.fixture(scope="module")
def vocab(base_tok) -> int:
    """Pieces of the base model: the first tag gets this id."""
    return base_tok.vocab_size


@pytest.fixture(scope="module")
def space_id(base_tok) -> int:
    """The lone "▁" piece, which the tokenizer puts before a tag."""
    return base_tok.convert_tokens_to_ids(["\u2581"])[0]


@pytest.fixture(scope="module")
def extended(bpe_path):
    return _extend(bpe_path)


@pytest.fixture(scope="module")
def tok(extended):
    return _wetext_tokenizer(extended)


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return json.loads((fixture_dir / "expected_text.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def official_tok(fixture_dir):
    return _wetext_tokenizer(_extend(fixture_dir / "checkpoint" / "bpe.model"))


def test_tags_get_contiguous_ids_after_the_base_vocabulary(extended, vocab):
    _, tagset = extended
    assert tagset.token_ids == {t: vocab + i for i, t in enumerate(tagset.tags)}


def test_old_pieces_keep_their_ids_and_bytes(extended, base_tok, bpe_path, vocab):
    data, tagset = extended
    raw = TextTokenizer(data, normalizer=None)
    assert raw.vocab_size == vocab + 5
    assert raw.convert_ids_to_tokens(list(range(vocab))) == base_tok.convert_ids_to_tokens(list(range(vocab)))
    assert raw.convert_ids_to_tokens(list(range(vocab, vocab + 5))) == [
        "▁<LAUGHS>", "▁<GIGGLES>", "▁<SIGHS>", "▁<CHUCKLES>", "▁<LAUGHS▁NERVOUSLY>"]
    assert data.startswith(bpe_path.read_bytes())


def test_extending_twice_appends_only_new_tags(extended, vocab):
    data, tagset = extended
    again, ids = add_tag_pieces(data, ["<SIGH>", "<whispers>", "<laughs>"])
    assert ids == {"<sigh>": vocab + 5, "<whispers>": vocab + 6, "<laughs>": vocab}
    third, ids3 = add_tag_pieces(again, ["<whispers>"])
    assert third == again and ids3 == {"<whispers>": vocab + 6}


def test_extend_model_file_writes_atomically(bpe_path, tmp_path, vocab):
    dst = tmp_path / "bpe.model"
    assert extend_model_file(bpe_path, dst, ["<laughs>"]) == {"<laughs>": vocab}
    assert extend_model_file(dst, dst, ["<sighs>"]) == {"<sighs>": vocab + 1}  # in place
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.model"]  # no temp file left behind
    assert TextTokenizer(dst, normalizer=None).vocab_size == vocab + 2


@pytest.mark.parametrize("text", UNTAGGED)
def test_untagged_texts_keep_their_ids_with_extended_model(tok, bpe_path, text):
    plain = TextTokenizer(bpe_path, normalizer=TextNormalizer(backend="wetext"))
    assert tok.encode(text) == plain.encode(text)


@pytest.mark.parametrize("i", [0, 1, 2, 4, 5, 6])
def test_untagged_texts_keep_official_ids_with_extended_model(official_tok, golden, i):
    rec = golden["texts"][i]
    assert official_tok.encode(rec["text"]) == rec["ids_norm"]


@pytest.mark.parametrize("text, tags", [
    ("<laughs>", ["<laughs>"]),
    ("<GIGGLES> Well, that's funny... <laugh> Ha!", ["<giggles>", "<laughs>"]),  # fixture text 3
    ("你好<giggles>世界。", ["<giggles>"]),
    ("我有3只猫 <SIGH>，好的。", ["<sighs>"]),
    ("IndexTTS 是一个<chuckle>模型, it's 25 <Laughs Nervously>!", ["<chuckles>", "<laughs nervously>"]),
    ("HA<laughs>HA [laughs] (laughs)", ["<laughs>"]),
])
def test_each_tag_encodes_to_one_id(tok, extended, vocab, text, tags):
    _, tagset = extended
    ids = tok.encode(text)
    tag_ids = [i for i in ids if i >= vocab]
    assert tag_ids == [tagset.token_ids[t] for t in tags]
    pieces = tok.tokenize(text)
    assert [p for p in pieces if "<" in p and len(p) > 1] == [tagset.pieces[tagset.tags.index(t)] for t in tags]


def test_fixture_tag_text_with_tags(tok, vocab, space_id):
    # Official: "<GIGGLES>" falls apart into 8 pieces with two <unk>s; with the tag set, one id that holds the space
    # before it (no bare space piece), and the words around the tags keep their own ids
    text = "<GIGGLES> Well, that's funny... <laugh> Ha!"  # the fixture's text 3
    giggles, laughs = vocab + 1, vocab
    ids = tok.encode(text)
    assert ids[0] == giggles and ids.count(giggles) == ids.count(laughs) == 1
    k = ids.index(laughs)
    assert ids[k - 1] != space_id
    assert not any(i >= vocab for i in ids[1:k] + ids[k + 1:])
    assert ids[1:k] == tok.encode("Well, that's funny...") and ids[k + 1:] == tok.encode("Ha!")


def test_unknown_tag_at_synthesis(tok, extended, vocab, space_id):
    data, tagset = extended
    with pytest.raises(Exception, match="unknown tag <whistles>; known tags: <chuckles>, <giggles>"):
        tok.encode("hi <whistles>")
    lenient = TextTokenizer(data, tagset=tagset, normalizer=None, unknown_tags="drop")
    with pytest.warns(UserWarning, match="whistles"):
        assert lenient.encode("<whistles> <laughs>") == [vocab]


def test_tokenizer_rejects_a_model_without_the_tag_pieces(bpe_path, extended):
    with pytest.raises(TokenizerError, match="not in the tokenizer model"):
        TextTokenizer(bpe_path, tagset=TagSet(FOUR), normalizer=None)
    data, _ = extended
    wrong = TagSet(FOUR, token_ids={"<laughs>": 12000})
    with pytest.raises(TokenizerError, match="says id 12000"):
        TextTokenizer(data, tagset=wrong, normalizer=None)


def test_word_piece_ids_spell_out_the_tag(tok, vocab):
    ids = tok.word_piece_ids("LAUGHS")
    assert ids and max(ids) < vocab and tok.unk_token_id not in ids  # plain pieces of the base model
    assert "".join(tok.convert_ids_to_tokens(ids)).lstrip("\u2581") == "LAUGHS"


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
    assert pieces[:3] == ["▁<LAUGHS>", "▁HA", "!"] and pieces[-2:] == [".", "▁<SIGHS>"]
    assert split_sentences(pieces, 3)[-1] == ["▁<SIGHS>"]  # official packing isolates the closing tag
    assert tok.split_sentences(pieces, 3) == [pieces[:3], pieces[3:]]


def test_from_model_dir_picks_up_the_tags_file(bpe_path, tmp_path, vocab, space_id):
    base = TextTokenizer.from_model_dir(bpe_path.parent, normalizer=None)
    assert base.vocab_size == vocab and base.tag_ids == {}
    ids = extend_model_file(bpe_path, tmp_path / "bpe.model", FOUR)
    TagSet(FOUR).with_token_ids(ids).save(tmp_path / "tags.json")
    tok = TextTokenizer.from_model_dir(tmp_path, normalizer=None)
    assert tok.tag_ids == ids and tok.encode("<LAUGH>") == [vocab] and tok.tag_space_id is None


def test_bare_tag_pieces_of_older_tag_sets_keep_working(bpe_path, tmp_path, vocab, space_id):
    # tags files written before spaced pieces: "<LAUGHS>" after a bare space piece, as they were trained
    ids = extend_model_file(bpe_path, tmp_path / "bpe.model", FOUR, spaced=False)
    TagSet(FOUR, spaced=False).with_token_ids(ids).save(tmp_path / "tags.json")
    tok = TextTokenizer.from_model_dir(tmp_path, normalizer=None)
    assert tok.encode("<LAUGH>") == [space_id, vocab] and tok.tag_space_id == space_id
    assert tok.encode("hi <sighs>")[-2:] == [space_id, vocab + 2]
    assert tok.tag_pieces == {"<LAUGHS>", "<GIGGLES>", "<SIGHS>", "<CHUCKLES>"}
    # a tag added to such a tokenizer takes the same bare style
    data, merged = extend_tokenizer((tmp_path / "bpe.model").read_bytes(), tok.tagset, TagSet(["<whispers>"]))
    assert not merged.spaced and merged.pieces[-1] == "<WHISPERS>"
    assert TextTokenizer(data, merged, normalizer=None).encode("a <whispers>")[-2:] == [space_id, vocab + 4]


def test_spaced_tag_set_on_an_official_tokenizer(bpe_path):
    data, merged = extend_tokenizer(bpe_path.read_bytes(), None, TagSet(["<whispers>"]))
    assert merged.spaced and merged.pieces == ["\u2581<WHISPERS>"]
