"""Official-parity tests of the text frontend against the fixture (ids, pieces, normalised text, splits), and
the rules that need no fixture."""

from __future__ import annotations

import json

import pytest

from tagtune.text import TextNormalizer, TextTokenizer, tokenize_by_cjk_char
from tagtune.text.tokenizer import TokenizerError

N_TEXTS = 7
SPLIT_LIMITS = (120, 100, 6)
# the fixture's text 5, "It costs 25 dollars.", normalised and cut into the pieces of its bpe.model
COSTS_PIECES = ["▁IT", "▁CO", "ST", "S", "▁", "T", "W", "ENT", "Y", "▁F", "IVE", "▁DO", "LL", "AR", "S", "."]


@pytest.fixture(scope="module")
def text_golden(fixture_dir):
    return json.loads((fixture_dir / "expected_text.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bpe_path(fixture_dir):
    return fixture_dir / "checkpoint" / "bpe.model"


@pytest.fixture(scope="module")
def raw_tok(bpe_path):
    return TextTokenizer(bpe_path, normalizer=None)


@pytest.fixture(scope="module")
def norm_tok(bpe_path):
    pytest.importorskip("wetext")
    return TextTokenizer(bpe_path, normalizer=TextNormalizer(backend="wetext"))


def case(golden, i):
    return golden["texts"][i]


@pytest.mark.parametrize("i", range(N_TEXTS))
def test_ids_without_normaliser_equal_official(raw_tok, text_golden, expected, i):
    rec = case(text_golden, i)
    assert raw_tok.encode(rec["text"]) == expected[f"text_ids_{i}"][0].tolist() == rec["ids_raw"]
    assert raw_tok.tokenize(rec["text"]) == rec["pieces_raw"]


@pytest.mark.parametrize("i", range(N_TEXTS))
def test_ids_with_normaliser_equal_official(norm_tok, text_golden, expected, i):
    rec = case(text_golden, i)
    pieces = norm_tok.tokenize(rec["text"])
    assert pieces == rec["pieces_norm"]
    assert norm_tok.convert_tokens_to_ids(pieces) == expected[f"text_ids_norm_{i}"][0].tolist()
    assert norm_tok.encode(rec["text"]) == rec["ids_norm"]


@pytest.mark.parametrize("i", range(N_TEXTS))
def test_normalised_text_and_cjk_split_equal_official(norm_tok, text_golden, i):
    rec = case(text_golden, i)
    if rec["single_char_shortcut"]:
        assert norm_tok.preprocess(rec["text"]) == rec["text"]
        return
    normalized = norm_tok.normalizer.normalize(rec["text"])
    assert normalized == rec["normalized"]
    assert tokenize_by_cjk_char(normalized) == rec["cjk_split_normalized"]
    assert tokenize_by_cjk_char(rec["text"]) == rec["cjk_split_raw"]
    assert norm_tok.preprocess(rec["text"]) == rec["cjk_split_normalized"]


@pytest.mark.filterwarnings("ignore:a sentence exceeds:RuntimeWarning")
@pytest.mark.parametrize("limit", SPLIT_LIMITS)
@pytest.mark.parametrize("i", range(N_TEXTS))
def test_split_sentences_equal_official(raw_tok, text_golden, i, limit):
    rec = case(text_golden, i)
    assert raw_tok.split_sentences(rec["pieces_norm"], limit) == rec[f"sentences_{limit}"]


def test_split_sentences_warns_on_fixed_size_cut(shipped_base):
    tok = TextTokenizer(shipped_base / "bpe.model", normalizer=None)
    with pytest.warns(RuntimeWarning, match="exceeds 6 tokens"):  # no comma, no hyphen: 16 pieces cut at 6
        assert [len(s) for s in tok.split_sentences(COSTS_PIECES, 6)] == [6, 1, 6, 3]


def test_vocabulary_and_special_ids(raw_tok, text_golden):
    assert raw_tok.vocab_size == text_golden["vocab_size"] == 320
    assert (raw_tok.bos_token_id, raw_tok.eos_token_id, raw_tok.unk_token_id) == (
        text_golden["bos_id"], text_golden["eos_id"], text_golden["unk_id"])
    assert raw_tok.pad_token_id == -1
    assert raw_tok.convert_ids_to_tokens(list(range(320))) == text_golden["pieces"]


def test_empty_and_missing_model(shipped_base, tmp_path):
    assert TextTokenizer(shipped_base / "bpe.model", normalizer=None).encode("") == []
    with pytest.raises(TokenizerError, match="not found"):
        TextTokenizer(tmp_path / "nope.model", normalizer=None)


@pytest.mark.parametrize("line, want", [
    ("你好世界是 hello world 的中文", "你 好 世 界 是 HELLO WORLD 的 中 文"),
    ("  ok\u3000", "OK"),  # U+3000 lies in the CJK ranges: split off, then stripped as blank
    ("\uff48\uff49", "\uff28\uff29"),  # full-width Latin (below FF65) is not CJK: upper-cased, not split
    ("mix<laughs>你", "MIX<LAUGHS> 你"),
])
def test_tokenize_by_cjk_char(line, want):
    assert tokenize_by_cjk_char(line) == want
