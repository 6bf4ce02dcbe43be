"""The text normaliser WER and CER are computed after, on both the reference and the recognised text.

English (WER, over words):
  1. tags (``<laughs>``, ``[sighs]`` ...) and anything between brackets are removed: the reference is
     what should be *said*;
  2. Unicode NFKC, lower case, curly quotes and apostrophes made straight;
  3. every character that is neither a letter, a digit nor an apostrophe inside a word becomes a space
     (punctuation and symbols: "well," == "well"; "don't" stays one word);
  4. whitespace collapsed.
Chinese (CER, over characters): the same, then every space removed, so the recogniser's spacing never counts.
Numbers are compared as written: prompts spell them out, and recognisers mostly do too. Traditional and
simplified Chinese characters are not unified: ask the recogniser for simplified output (Whisper's ``zh``
mostly gives it) when the prompts are simplified.
"""

from __future__ import annotations

import re
import unicodedata

from tagtune.tags.vocab import tag_regex

ENGLISH, CHINESE = "en", "zh"
LANGUAGES = (ENGLISH, CHINESE)
_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|\{[^}]*\}|\*[^*]*\*")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def remove_tags(text: str) -> str:
    """The text with every tag and bracketed stage direction removed (spaces left where they stood)."""
    return _BRACKETED.sub(" ", tag_regex().sub(" ", text))


def normalize(text: str, language: str = ENGLISH) -> str:
    """Text as WER/CER compares it (see the module docstring)."""
    text = unicodedata.normalize("NFKC", remove_tags(text)).translate(_QUOTES).lower()
    text = _INNER_APOSTROPHE.sub("\x00", text)  # protect "don't" while punctuation goes
    kept = [c if c == "\x00" or unicodedata.category(c)[0] in "LN" else " " for c in text]
    text = " ".join("".join(kept).replace("\x00", "'").split())
    return text.replace(" ", "") if language == CHINESE else text


def language_of(text: str) -> str:
    """CHINESE when the text holds any CJK ideograph, else ENGLISH."""
    return CHINESE if any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text) else ENGLISH
