"""Tag grammar, canonicalisation, multi-word policies, unknown tags, scans and the tags file."""

from __future__ import annotations

import json

import pytest

from tagtune.errors import UserError
from tagtune.tags import (
    TagError,
    TagSet,
    UnknownTagError,
    find_tags,
    format_tag,
    infer_tagset,
    load_tag_map,
    scan_texts,
    tag_piece,
)
from tagtune.tags.vocab import space_before_tags

FOUR = ["<laughs>", "<giggles>", "<sighs>", "<chuckles>"]

ELISE_LIKE = [
    "<laughs> Oh my. <LAUGH> I have cats.",
    "<sighs> fine <sigh>",
    "<giggles> 你好<giggles>。",
    "<laughs nervously> ok <clears throat>",
    "<Chuckles> haha <giggle> <laughs>",
    "no tags here",
]


@pytest.mark.parametrize("text, found", [
    ("<laughs> hi <LAUGHS  nervously> <clears throat>", ["laughs", "laughs nervously", "clears throat"]),
    ("a < b and c > d, x<y>z", ["y"]),  # no blanks just inside the brackets
    ("<n_a> <pinyin_b> <3> <>", []),  # the normaliser's own placeholders are not tags
    ("<one two three four> <one two three four five>", ["one two three four"]),
    ("<well-known>", ["well-known"]),
])
def test_find_tags(text, found):
    assert [m.name for m in find_tags(text)] == found


def test_find_tags_with_other_delimiters():
    matches = find_tags("Oh [Laughter] and <laughs>", delimiters=("[", "]"))
    assert [(m.raw, m.name, m.start, m.end) for m in matches] == [("[Laughter]", "laughter", 3, 13)]


@pytest.mark.parametrize("tag, canonical, piece", [
    ("<LAUGHS>", "<laughs>", "<LAUGHS>"),
    ("laughs  Nervously", "<laughs nervously>", "<LAUGHS▁NERVOUSLY>"),
    ("[sigh]", "<sigh>", "<SIGH>"),
])
def test_spellings(tag, canonical, piece):
    assert format_tag(tag) == canonical
    assert tag_piece(tag) == "▁" + piece  # spaced: the piece holds the space before the tag
    assert tag_piece(tag, spaced=False) == piece


@pytest.mark.parametrize("text, spaced", [
    ("Hi!<laughs> ok", "Hi! <laughs> ok"), ("<laughs> first", "<laughs> first"), ("a <sighs>", "a <sighs>"),
    ("x<a><b>", "x <a> <b>"), ("你好<laughs>", "你好 <laughs>"), ("no tags", "no tags"), ("a\t<b>", "a\t<b>"),
])
def test_space_before_tags(text, spaced):
    assert space_before_tags(text) == spaced


@pytest.mark.parametrize("bad", ["<>", "<3 cats>", "<a_b>", "<one two three four five>"])
def test_bad_tags_are_rejected(bad):
    with pytest.raises(TagError):
        format_tag(bad)


@pytest.mark.parametrize("raw, canonical", [
    ("<laugh>", "<laughs>"), ("<LAUGHS>", "<laughs>"), ("<Laugh>", "<laughs>"),
    ("<giggle>", "<giggles>"), ("<SIGH>", "<sighs>"), ("<chuckle>", "<chuckles>"),
])
def test_variants_merge_but_words_stay_distinct(raw, canonical):
    assert TagSet(FOUR).resolve(raw) == canonical


def test_distinct_words_are_not_merged():
    tagset = TagSet(FOUR)
    assert len({tagset.resolve(t) for t in FOUR}) == 4
    with pytest.raises(UnknownTagError):
        TagSet(["<laughs>"]).resolve("<giggles>")


def test_merging_can_be_switched_off():
    with pytest.raises(UnknownTagError):
        TagSet(FOUR, merge_variants=False).resolve("<laugh>")
    assert TagSet(FOUR, merge_variants=False).resolve("<LAUGHS>") == "<laughs>"


def test_unknown_tag_error_lists_known_tags():
    with pytest.raises(UnknownTagError) as info:
        TagSet(FOUR).canonicalize("hi <whistles> there")
    assert str(info.value) == "unknown tag <whistles>; known tags: <chuckles>, <giggles>, <laughs>, <sighs>"
    assert isinstance(info.value, UserError) and info.value.known == sorted(FOUR)


def test_unknown_tags_can_be_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="unknown tag <whistles>"):
        got = TagSet(FOUR).canonicalize("hi <whistles> there <LAUGH>", unknown="drop")
    assert got == "hi there <laughs>"


@pytest.mark.parametrize("text, want", [
    ("<whistles> hi", "hi"), ("hi <whistles>", "hi"), ("hi <whistles> <whistles> there", "hi there"),
    ("hi<whistles>there", "hithere"), ("hi <whistles>, there", "hi , there"),
])
def test_dropping_leaves_single_spaces(text, want):
    with pytest.warns(UserWarning):
        assert TagSet(FOUR).canonicalize(text, unknown="drop") == want


@pytest.mark.parametrize("policy, want", [
    ("own", "<laughs nervously> ok"),  # listed as its own tag below
    ("base", "<laughs> ok"),
    ("drop", "ok"),
])
def test_multiword_policy(policy, want):
    tags = FOUR + (["<laughs nervously>"] if policy == "own" else [])
    assert TagSet(tags, multiword=policy).canonicalize("<Laughs Nervously> ok") == want


def test_multiword_own_tag_must_be_known():
    with pytest.raises(UnknownTagError):
        TagSet(FOUR, multiword="own").resolve("<laughs nervously>")


def test_user_map_wins_over_variant_merging(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("<chortle>: <chuckles>\nlaugh: giggles\n'[sniff]': null\n", encoding="utf-8")
    aliases = load_tag_map(path)
    assert aliases == {"<chortle>": "<chuckles>", "<laugh>": "<giggles>", "<sniff>": None}
    tagset = TagSet(FOUR, aliases=aliases)
    assert tagset.canonicalize("<Chortle> <laugh> <laughs> <sniff> x") == "<chuckles> <giggles> <laughs> x"


def test_alias_to_an_unlisted_tag_is_an_error():
    with pytest.raises(TagError, match="not one of the tags"):
        TagSet(["<laughs>"], aliases={"<chortle>": "<chuckles>"})


def test_two_canonical_variants_of_one_tag_are_an_error():
    with pytest.raises(TagError, match="variant"):
        TagSet(["<laugh>", "<laughs>"])


def test_canonicalise_bracket_delimited_corpus():
    tagset = TagSet(["<laughter>"], delimiters=("[", "]"))
    assert tagset.canonicalize("So [Laughter] funny [LAUGHTERS]") == "So <laughter> funny <laughter>"


def test_infer_tagset_from_corpus():
    tagset = infer_tagset(ELISE_LIKE)
    assert tagset.tags == [
        "<giggles>", "<laughs>", "<sighs>", "<chuckles>", "<clears throat>", "<laughs nervously>"]
    assert tagset.aliases == {"<laugh>": "<laughs>", "<sigh>": "<sighs>", "<giggle>": "<giggles>"}


def test_infer_tagset_multiword_base_and_min_count():
    tagset = infer_tagset(ELISE_LIKE, multiword="base", min_count=2)
    assert tagset.tags == ["<laughs>", "<giggles>", "<sighs>"]  # laughs: 3 + nervously 1
    assert tagset.aliases["<laughs nervously>"] == "<laughs>"


def test_scan_counts_per_raw_variant_and_canonical_tag():
    scan = scan_texts(ELISE_LIKE, multiword="drop")
    assert scan.raw_counts == {
        "<laughs>": 2, "<LAUGH>": 1, "<sighs>": 1, "<sigh>": 1, "<giggles>": 2, "<giggle>": 1,
        "<Chuckles>": 1, "<laughs nervously>": 1, "<clears throat>": 1}
    assert scan.canonical_counts == {"<laughs>": 3, "<sighs>": 2, "<giggles>": 3, "<chuckles>": 1}
    assert scan.dropped == {"<laughs nervously>": 1, "<clears throat>": 1}
    assert (scan.texts, scan.texts_with_tags) == (6, 5)
    assert scan.variants()["<laughs>"] == ["<laughs>", "<LAUGH>"]
    assert "  <laughs>                      3   <- <laughs> x2, <LAUGH> x1" in scan.summary()


def test_scan_with_given_tagset_reports_unknown():
    scan = scan_texts(ELISE_LIKE, tagset=TagSet(["<laughs>"]))
    assert scan.canonical_counts == {"<laughs>": 3}
    assert scan.unknown["<giggles>"] == 2 and "unknown: " in scan.summary()


def test_tags_file_round_trip(tmp_path):
    tagset = TagSet(FOUR, aliases={"<chortle>": "<chuckles>"}, multiword="base",
                    token_ids={t: 12000 + i for i, t in enumerate(FOUR)})
    path = tmp_path / "tags.json"
    tagset.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["tags"][0] == {"tag": "<laughs>", "piece": "▁<LAUGHS>", "id": 12000} and data["spaced_pieces"]
    assert TagSet.load(path) == tagset
    legacy = dict(data, tags=[dict(e, piece=e["piece"].lstrip("▁")) for e in data["tags"]])
    del legacy["spaced_pieces"]  # a tags file written before spaced pieces: bare pieces, read as such
    path.write_text(json.dumps(legacy), encoding="utf-8")
    old = TagSet.load(path)
    assert not old.spaced and old.pieces[0] == "<LAUGHS>" and old.tags == tagset.tags
    old.save(path)
    assert TagSet.load(path) == old and json.loads(path.read_text(encoding="utf-8"))["spaced_pieces"] is False
    path.write_text(json.dumps(dict(data, spaced_pieces="yes")), encoding="utf-8")
    with pytest.raises(TagError, match="spaced_pieces"):
        TagSet.load(path)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(TagError, match="tags file"):
        TagSet.load(path)
