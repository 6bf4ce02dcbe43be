"""Text normalisation equal to the official IndexTTS v1.5.0 ``TextNormalizer``, with tags shielded.

Pipeline (official order): 嗯→恩 / 呣→母 → choose Chinese or English → expand "'s" after a few words
→ (Chinese only) protect pinyin-with-tone and 汉字·汉字 names → wetext → restore → punctuation map.

Our addition: every tag (``<laughs>``) is replaced by a private-use character before the pipeline and put
back at the end, so the normaliser can neither rewrite its brackets (``[`` → ``'``), spell it out, nor
split it. The official placeholders (``<pinyin_a>``, ``<n_a>``) are kept as they are, so that what
wetext sees is identical to the official code for text without tags.

``wetext`` is an optional dependency, imported on first use. Without it the fallback applies every step
except wetext itself (numbers stay digits) and warns once.

Quotes, as the official code computes them on Linux (WeTextProcessing 1.2.0, checked empirically): wetext
shares its grammars but leaves the tagger's escapes in its output (``"no"`` → ``\\"no\\"``, ``\\`` →
``\\\\``), which then tokenise to ``<unk>``; those escapes are undone here. And WeTextProcessing's English
grammar verbalises a punctuation run that opens the text as a token of its own, followed by a space:
``"no" he said`` → ``" no" he said``, ``'single'`` → ``' single'``, ``“curly”`` → ``“ curly”``, ``(a)`` →
``( a)``, while a quote after a word (``He said "no"``) stays attached. The punctuation map then turns the
quotes into ``'``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import warnings

from tagtune.tags.vocab import DEFAULT_DELIMITERS, tag_regex

log = logging.getLogger(__name__)

# v1.5.0 replaces only these two characters before normalising (HEAD has a longer list).
CHAR_REPLACEMENTS = {"嗯": "恩", "呣": "母"}

# Applied as ONE alternation in this order, single pass: "，，，" becomes ",,," because "，" is tried first.
PUNCTUATION_MAP = {
    "：": ",", "；": ",", ";": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": " ", "·": "-",
    "、": ",", "...": "…", ",,,": "…", "，，，": "…", "……": "…", "“": "'", "”": "'", '"': "'",
    "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'", "《": "'", "》": "'", "【": "'",
    "】": "'", "[": "'", "]": "'", "—": "-", "～": "-", "~": "-", "「": "'", "」": "'", ":": ",",
}
ZH_PUNCTUATION_MAP = {"$": ".", **PUNCTUATION_MAP}

PINYIN_TONE = (
    r"(?<![a-z])((?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|[uvü]ang?"
    r"|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)|ng|er)([1-5])"
)
NAME = r"[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}"
CONTRACTION = r"(what|where|who|which|how|t?here|it|s?he|that|this)'s"
EMAIL = r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$"

# Tags become single private-use characters: no letters or digits for wetext to rewrite, and the
# punctuation map never touches them. Input characters in this range would collide, so they are removed
# (sentencepiece would map them to <unk> anyway).
SHIELD_BASE = 0xE000
SHIELD_LIMIT = 0xF8FF
BACKENDS = ("auto", "wetext", "none")

# WeTextProcessing's English punctuation token: Unicode punctuation except "[" and "]", the ASCII marks it
# lists beside them, and not the symbols its whitelist spells out ("&" → "and", "%" → "percent" ...).
EN_EXTRA_PUNCTUATION = "<>`"
EN_SPELLED_SYMBOLS = "&#@§_%*/"
EN_NOT_PUNCTUATION = "[]"

_PINYIN_RE = re.compile(PINYIN_TONE, re.IGNORECASE)
_ESCAPE_RE = re.compile(r'\\(["\\])')
_NAME_RE = re.compile(NAME, re.IGNORECASE)
_CONTRACTION_RE = re.compile(CONTRACTION, re.IGNORECASE)
_SHIELD_RE = re.compile(f"[{chr(SHIELD_BASE)}-{chr(SHIELD_LIMIT)}]")
_HAS_CJK_RE = re.compile(r"[\u4e00-\u9fff]")
_HAS_LATIN_RE = re.compile(r"[a-zA-Z]")
_warned_fallback = False


def _alternation(mapping: dict[str, str]):
    pattern = re.compile("|".join(re.escape(k) for k in mapping))
    return lambda text: pattern.sub(lambda m: mapping[m.group()], text)


_map_punctuation = _alternation(PUNCTUATION_MAP)
_map_punctuation_zh = _alternation(ZH_PUNCTUATION_MAP)


def use_chinese(text: str) -> bool:
    """The official language choice: CJK present, no Latin letter, an e-mail, or a pinyin+tone token."""
    if _HAS_CJK_RE.search(text) or not _HAS_LATIN_RE.search(text) or re.match(EMAIL, text):
        return True
    return bool(_PINYIN_RE.search(text))


def expand_contractions(text: str) -> str:
    """"it's" → "it is" after the official word list only (not every "'s")."""
    return _CONTRACTION_RE.sub(r"\1 is", text)


def correct_pinyin(pinyin: str) -> str:
    """j/q/x + u/ü → v and upper-case (ju3 → JV3); other syllables are returned unchanged."""
    if pinyin[0] not in "jqxJQX":
        return pinyin
    return re.sub(r"([jqx])[uü](n|e|an)*(\d)", r"\g<1>v\g<2>\g<3>", pinyin, flags=re.IGNORECASE).upper()


def unescape_wetext(text: str) -> str:
    """Undo the escapes wetext leaves in its output (``\\"`` → ``"``, ``\\\\`` → ``\\``), as WeTextProcessing does."""
    return _ESCAPE_RE.sub(r"\1", text)


def _is_en_punctuation(char: str) -> bool:
    if char in EN_EXTRA_PUNCTUATION:
        return True
    return (unicodedata.category(char).startswith("P") and char not in EN_NOT_PUNCTUATION
            and char not in EN_SPELLED_SYMBOLS)


def space_after_leading_punctuation(text: str) -> str:
    """WeTextProcessing's English output for a text that opens with punctuation: a space after that run
    (spaces inside it kept) when a word follows it (``"no" he said`` → ``" no" he said``)."""
    start = len(text) - len(text.lstrip())
    end = start
    while end < len(text) and (_is_en_punctuation(text[end]) or text[end].isspace()):
        end += 1
    if end == start or end == len(text):
        return text
    return text[:end] + " " + text[end:]


def _protect(text: str, pattern: re.Pattern, prefix: str) -> tuple[str, list[str]]:
    """Replace each distinct match by ``<prefix_a>``, ``<prefix_b>``...; longest first for determinism."""
    found = sorted({m.group(0) for m in pattern.finditer(text)}, key=lambda s: (-len(s), s))
    for i, original in enumerate(found):
        text = text.replace(original, f"<{prefix}_{chr(ord('a') + i)}>")
    return text, found


def _restore(text: str, originals: list[str], prefix: str, fix=lambda s: s) -> str:
    for i, original in enumerate(originals):
        text = text.replace(f"<{prefix}_{chr(ord('a') + i)}>", fix(original))
    return text


def shield_tags(text: str, pattern: re.Pattern) -> tuple[str, list[str]]:
    """Replace every tag by one private-use character; returns the text and the tags in order."""
    text = _SHIELD_RE.sub("", text)
    tags: list[str] = []

    def stash(m: re.Match) -> str:
        tags.append(m.group(0))
        if SHIELD_BASE + len(tags) - 1 > SHIELD_LIMIT:
            raise ValueError(f"too many tags in one text ({len(tags)})")
        return chr(SHIELD_BASE + len(tags) - 1)

    return pattern.sub(stash, text), tags


def unshield_tags(text: str, tags: list[str]) -> str | None:
    """Put the tags back; None when the normaliser lost or duplicated a placeholder."""
    for i in range(len(tags)):
        if text.count(chr(SHIELD_BASE + i)) != 1:
            return None
    return _SHIELD_RE.sub(lambda m: tags[ord(m.group()) - SHIELD_BASE], text)


class TextNormalizer:
    """The official v1.5.0 normaliser; tags matching ``delimiters`` pass through unchanged.

    backend: "auto" (wetext when installed, else the fallback with a one-time warning), "wetext"
    (required), or "none" (fallback, no warning).
    """

    def __init__(self, backend: str = "auto", delimiters: tuple[str, str] = DEFAULT_DELIMITERS):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.tag_pattern = tag_regex(delimiters)
        self._zh = self._en = None
        self._loaded = False

    @property
    def uses_wetext(self) -> bool:
        """True when numbers, dates and units are spelled out by wetext."""
        self.load()
        return self._zh is not None

    def load(self) -> None:
        """Import wetext and build both grammars (once)."""
        if self._loaded or self.backend == "none":
            self._loaded = True
            return
        try:
            from wetext import Normalizer
        except ImportError:
            if self.backend == "wetext":
                raise ImportError("text normalisation needs wetext: pip install 'tagtune[normalize]'") from None
            _warn_fallback()
        else:
            self._zh = Normalizer(remove_erhua=False, lang="zh", operator="tn")
            self._en = Normalizer(lang="en", operator="tn")
        self._loaded = True

    def normalize(self, text: str) -> str:
        """Normalise ``text`` exactly as the official code does, keeping tags intact."""
        self.load()
        for old, new in CHAR_REPLACEMENTS.items():
            text = text.replace(old, new)
        chinese = use_chinese(text)
        shielded, tags = shield_tags(text, self.tag_pattern)
        restored = unshield_tags(self._normalize_language(shielded, chinese), tags)
        if restored is not None:
            return restored
        # The normaliser moved a placeholder: normalise the stretches between tags on their own.
        parts = [self._normalize_language(p, chinese) if p.strip() else p for p in _SHIELD_RE.split(shielded)]
        return "".join(p + (tags[i] if i < len(tags) else "") for i, p in enumerate(parts))

    def _normalize_language(self, text: str, chinese: bool) -> str:
        text = expand_contractions(text)
        if not chinese:
            text = self._run(self._en, text)
            if self._en is not None:
                text = space_after_leading_punctuation(text)
            return _map_punctuation(text)
        text, pinyins = _protect(text.rstrip(), _PINYIN_RE, "pinyin")
        text, names = _protect(text, _NAME_RE, "n")
        text = self._run(self._zh, text)
        text = _restore(text, names, "n")
        text = _restore(text, pinyins, "pinyin", correct_pinyin)
        return _map_punctuation_zh(text)

    @staticmethod
    def _run(normalizer, text: str) -> str:
        # The official Chinese branch returns "" on a wetext failure; keeping the text is kinder to a user.
        if normalizer is None or not text.strip():
            return text
        try:
            return unescape_wetext(normalizer.normalize(text))
        except Exception as e:  # wetext raises bare AssertionErrors on some inputs
            log.warning("wetext failed on %r (%s); text kept as it is", text, type(e).__name__)
            return text


def _warn_fallback() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "wetext is not installed: numbers, dates and units are not spelled out "
            "(pip install 'tagtune[normalize]'); only the punctuation map and contractions apply",
            RuntimeWarning,
            stacklevel=3,
        )
