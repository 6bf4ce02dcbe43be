"""Table-driven tests of the official normaliser rules and of tag shielding."""

from __future__ import annotations

import re
import sys
import warnings

import pytest

from tagtune.text import normalize as norm_module
from tagtune.text.normalize import TextNormalizer, correct_pinyin, use_chinese

# Rules that hold without wetext: (input, output) with backend="none".
RULE_CASES = [
    ("嗯，好的。", "恩,好的."),  # 嗯→恩, full-width punctuation
    ("呣的", "母的"),
    ("where's the money?", "where is the money?"),
    ("Tom's car, that's it; who's there", "Tom's car, that is it, who is there"),
    ("There's HOW'S", "There is HOW is"),
    ("这酒...里...有毒...", "这酒…里…有毒…"),
    ("只有,,,才是", "只有…才是"),
    ("只有，，，才是", "只有,,,才是"),  # "，" is tried before "，，，": one alternation in dict order
    ("省略……号", "省略…号"),
    ("“我爱你”（真的）【是】《书》「引」", "'我爱你''真的''是''书''引'"),
    ("a:b;c\nd—f", "a,b,c d-f"),
    ("晕XUAN4是一种GAN3觉", "晕XVAN4是一种GAN3觉"),  # pinyin restored, j/q/x+u → V, upper-case
    ("我想去ju3行", "我想去JV3行"),
    ("克里斯托弗·诺兰执导", "克里斯托弗-诺兰执导"),  # the name survives; "·"→"-" comes after
]
# Without wetext the digits stay, which shows the bare punctuation maps: "$"→"." only in Chinese.
# (wetext itself reads an English "~" as "tilde".)
PLAIN_ONLY_CASES = [("价格$5", "价格.5"), ("price $5", "price $5"), ("d~e～f", "d-e-f")]

# wetext-dependent outputs documented for wetext 0.1.8.
WETEXT_CASES = [
    ("It costs 25 dollars.", "It costs twenty five dollars."),
    ("今天是2024年3月5日，气温25度。", "今天是二零二四年三月五日,气温二十五度."),
]

# Tags pass through unchanged; the text around them is normalised as usual.
TAG_CASES = [
    ("<GIGGLES> Well, that's funny... <laugh> Ha!", "<GIGGLES> Well, that is funny… <laugh> Ha!"),
    ("<laughs> It costs 25 dollars <sighs>.", "<laughs> It costs twenty five dollars <sighs>."),
    ("我有3只猫<giggles>。", "我有三只猫<giggles>."),
    ("<giggles>今天是2024年3月5日。", "<giggles>今天是二零二四年三月五日."),
    ("IndexTTS 是一个<giggles>语音合成模型, it's great! <laughs nervously>",
     "IndexTTS 是一个<giggles>语音合成模型, it is great! <laughs nervously>"),
    ("克里斯托弗·诺兰<sighs>执导ju3", "克里斯托弗-诺兰<sighs>执导JV3"),
]


@pytest.fixture(scope="module")
def plain():
    return TextNormalizer(backend="none")


@pytest.fixture(scope="module")
def wetext():
    pytest.importorskip("wetext")
    return TextNormalizer(backend="wetext")


@pytest.mark.parametrize("text, want", RULE_CASES + PLAIN_ONLY_CASES)
def test_rules_without_wetext(plain, text, want):
    assert plain.normalize(text) == want


@pytest.mark.parametrize("text, want", RULE_CASES)
def test_rules_with_wetext(wetext, text, want):
    assert wetext.normalize(text) == want


@pytest.mark.parametrize("text, want", WETEXT_CASES)
def test_wetext_spells_out_numbers(wetext, text, want):
    assert wetext.uses_wetext
    assert wetext.normalize(text) == want


@pytest.mark.parametrize("text, want", TAG_CASES)
def test_tags_survive_normalisation(wetext, text, want):
    assert wetext.normalize(text) == want


def test_bracket_tags_are_shielded_with_their_delimiters(plain):
    bracketed = TextNormalizer(backend="none", delimiters=("[", "]"))
    assert bracketed.normalize("Ha [laughs] (yes)") == "Ha [laughs] 'yes'"
    assert plain.normalize("Ha [laughs] (yes)") == "Ha 'laughs' 'yes'"


def test_tags_survive_a_normaliser_that_loses_placeholders():
    lossy = TextNormalizer(backend="none")
    lossy.load()
    drop_private = type("Lossy", (), {"normalize": staticmethod(lambda s: re.sub("[\ue000-\uf8ff]", "", s))})
    lossy._en = lossy._zh = drop_private()
    assert lossy.normalize("Hi <laughs> there, it's <sighs> fine") == "Hi <laughs> there, it is <sighs> fine"
    assert lossy.normalize("你好<giggles>。") == "你好<giggles>."


def test_private_use_characters_in_input_are_removed(plain):
    assert plain.normalize("a\ue000b <laughs>") == "ab <laughs>"


@pytest.mark.parametrize("text, chinese", [
    ("hello", False), ("你好 hello", True), ("123 !", True), ("a@b.com", True),
    ("shang4 hai3", True), ("beta1 voice2", False), ("<laughs> ok", False),
])
def test_language_choice(text, chinese):
    assert use_chinese(text) is chinese


@pytest.mark.parametrize("pinyin, want", [("ju3", "JV3"), ("xuan4", "XVAN4"), ("que4", "QVE4"),
                                          ("lv4", "lv4"), ("zhong1", "zhong1")])
def test_correct_pinyin(pinyin, want):
    assert correct_pinyin(pinyin) == want


def test_missing_wetext_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "wetext", None)  # makes "import wetext" raise ImportError
    monkeypatch.setattr(norm_module, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="wetext is not installed"):
        first = TextNormalizer()
        assert first.normalize("It costs 25 dollars。") == "It costs 25 dollars."
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TextNormalizer().normalize("你好。") == "你好."
    strict = TextNormalizer(backend="wetext")
    for _ in range(2):  # a failed load is not remembered as done
        with pytest.raises(ImportError, match="tagtune\\[normalize\\]"):
            strict.normalize("hi")
