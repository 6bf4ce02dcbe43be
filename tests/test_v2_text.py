"""IndexTTS2 text frontend against the official results in the indextts2-tiny fixture (expected_text.json),
and the v2 segment rules that differ from v1.5.0 sentence packing."""

from __future__ import annotations

import json
import warnings

import pytest

from tagtune.text import TextTokenizer, split_segments, split_sentences, tokenize_by_cjk_char
from v2_fixture import V2_CHECKPOINT, V2_FIXTURE, require_v2


@pytest.fixture(scope="module")
def expected_text() -> dict:
    require_v2()
    path = V2_FIXTURE / "expected_text.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer(expected_text) -> TextTokenizer:
    return TextTokenizer(V2_CHECKPOINT / "bpe.model")


def texts(expected):
    return expected["texts"]


def test_vocabulary_matches(tokenizer, expected_text):
    assert tokenizer.vocab_size == expected_text["vocab_size"]
    assert tokenizer.unk_token_id == expected_text["unk_id"]
    assert tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size))) == expected_text["pieces"]


@pytest.mark.parametrize("index", range(4))
def test_normaliser_cjk_split_pieces_and_ids_match_official(tokenizer, expected_text, index):
    t = texts(expected_text)[index]
    assert tokenizer.normalizer.normalize(t["text"]) == t["normalized"]
    assert tokenize_by_cjk_char(t["normalized"]) == t["cjk_split"]
    pieces = tokenizer.tokenize(t["text"])
    assert pieces == t["pieces"]
    assert tokenizer.convert_tokens_to_ids(pieces) == t["ids"]
    assert tokenizer.encode(t["text"]).count(tokenizer.unk_token_id) == t["unk_count"]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("limit", [120, 8])
def test_segments_match_official(tokenizer, expected_text, index, limit):
    t = texts(expected_text)[index]
    with warnings.catch_warnings():
        # 8 pieces force the official fixed-size cut (and its warning) on every text but the first
        warnings.simplefilter("ignore" if limit == 8 else "error")
        assert tokenizer.split_segments(t["pieces"], limit) == t[f"segments_{limit}"]


def test_a_comma_closes_the_segment_at_once_unlike_v15():
    pieces = ["▁A", "▁B", ",", "▁C", "▁D", "."]
    # v2 closes at the comma, then merges the neighbours back while they fit
    assert split_segments(pieces, 120) == [pieces]
    assert split_segments(pieces, 5) == [["▁A", "▁B", ","], ["▁C", "▁D", "."]]
    # v1.5.0 only looks at commas once a sentence is too long; 6 pieces fit in 6
    assert split_sentences(pieces, 6) == [pieces]
    assert split_segments(pieces, 6) == [pieces]
    long = ["▁A", "▁B", "▁C", ",", "▁D", "▁E", "▁F", "▁G", "."]
    assert split_sentences(long, 8) == [["▁A", "▁B", "▁C", ","], ["▁D", "▁E", "▁F", "▁G", "."]]
    with pytest.warns(RuntimeWarning, match="exceeds 4 tokens"):
        assert split_segments(long, 4) == [["▁A", "▁B", "▁C", ","], ["▁D", "▁E", "▁F", "▁G"], ["."]]


def test_a_hyphen_closes_the_segment_when_there_is_no_comma():
    pieces = ["▁A", "▁B", "-", "▁C", "▁D", "."]
    assert split_segments(pieces, 4) == [["▁A", "▁B", "-"], ["▁C", "▁D", "."]]


def test_quick_streaming_merges_only_within_half_the_limit_at_first():
    pieces = ["▁A", "▁B", "."] + ["▁C", "▁D", "."] + ["▁E", "▁F", "▁G", "▁H", "."]
    assert split_segments(pieces, 12) == [pieces]
    # until 100 pieces have passed, neighbours merge only when together within 12 / 2
    assert split_segments(pieces, 12, quick_streaming_tokens=100) == [["▁A", "▁B", ".", "▁C", "▁D", "."],
                                                                      ["▁E", "▁F", "▁G", "▁H", "."]]
    assert split_segments(pieces, 12, quick_streaming_tokens=6) == [pieces]  # 11 pieces seen > 6


def test_a_quote_after_the_end_stays_with_the_segment_and_starts_the_next():
    pieces = ["▁A", "▁B", ".", "'", "▁C", "▁D", "!"]
    assert split_segments(pieces, 4) == [["▁A", "▁B", ".", "'"], ["'", "▁C", "▁D", "!"]]


def test_empty_input_gives_no_segments():
    assert split_segments([], 120) == []
