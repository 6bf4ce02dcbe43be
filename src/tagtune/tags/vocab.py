"""Expressive tags: grammar, canonicalisation (variant merging), corpus scans and the tags file.

A tag is one to four words of ASCII letters between delimiters, written in any case: ``<laughs>``,
``<LAUGH>``, ``<laughs nervously>``, or ``[laughter]`` with ``delimiters=("[", "]")``. Internally a tag has
a *name* (lower-case words, single spaces: ``"laughs nervously"``) and a canonical spelling with angle
brackets (``"<laughs nervously>"``), whatever delimiters the corpus used. Its sentencepiece piece is the
upper-cased spelling with "▁" for spaces, led by the "▁" of the space before the tag
(``"▁<LAUGHS▁NERVOUSLY>"``), because the tokenizer upper-cases Latin text and sentencepiece turns spaces into
"▁" before matching pieces. The tag thus takes the word boundary before it into its own piece: a bare "▁"
piece before it would be read by a base model as one more word boundary (a pause), which no tag row can
cancel. Tag sets made before this carry bare pieces (``"<LAUGHS>"``, after a "▁" piece) and keep them
(``TagSet.spaced``).

By default plural/singular and case variants merge (``<laugh>``, ``<laughs>``, ``<LAUGHS>`` → one tag);
different words (giggle, laugh, chuckle, sigh) never do. A user tag map (alias → canonical, ``null`` to
drop) takes precedence, and ``multiword`` decides what multi-word tags become: "own" (a tag of their
own), "base" (their first word: ``<laughs nervously>`` → ``<laughs>``) or "drop".
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tagtune.atomic import atomic_write_text
from tagtune.errors import UserError
from tagtune.folders import TAGS_FILE

DEFAULT_DELIMITERS = ("<", ">")
MULTIWORD_POLICIES = ("own", "base", "drop")
UNKNOWN_POLICIES = ("error", "drop")
MAX_TAG_WORDS = 4
SPACE_PIECE = "▁"  # sentencepiece's whitespace symbol
TAGS_FILE_FORMAT = "tagtune-tags"
TAGS_FILE_VERSION = 1
_WORD = r"[A-Za-z][A-Za-z\-]*"
_STRIP_DELIMITERS = "<>[](){}*"


class TagError(UserError, ValueError):
    """A malformed tag, tag map or tags file."""


class UnknownTagError(UserError, ValueError):
    """A tag the tag set does not know; the message lists the known tags."""

    def __init__(self, tag: str, known: Iterable[str]):
        self.tag, self.known = tag, sorted(known)
        listed = ", ".join(self.known) or "(none)"
        super().__init__(f"unknown tag {tag}; known tags: {listed}")


@dataclass(frozen=True)
class TagMatch:
    """One tag found in a text: as written, its name, and its span."""

    raw: str
    name: str
    start: int
    end: int


@functools.cache
def tag_regex(delimiters: tuple[str, str] = DEFAULT_DELIMITERS) -> re.Pattern:
    """Compiled grammar for tags between ``delimiters`` (no spaces just inside them)."""
    opening, closing = (re.escape(d) for d in delimiters)
    return re.compile(f"{opening}(?P<name>{_WORD}(?:[ \\t]+{_WORD}){{0,{MAX_TAG_WORDS - 1}}}){closing}")


def tag_name(tag: str) -> str:
    """``"<LAUGHS  Nervously>"`` → ``"laughs nervously"``; accepts a bare name too."""
    name = " ".join(tag.strip().strip(_STRIP_DELIMITERS).split()).lower()
    if not re.fullmatch(f"{_WORD}(?: {_WORD}){{0,{MAX_TAG_WORDS - 1}}}", name):
        raise TagError(f"not a tag: {tag!r} (one to {MAX_TAG_WORDS} words of letters)")
    return name


def format_tag(name: str) -> str:
    """Canonical spelling of a tag name: ``"laughs"`` → ``"<laughs>"``."""
    return f"<{tag_name(name)}>"


def tag_piece(tag: str, spaced: bool = True) -> str:
    """The sentencepiece piece of a tag: ``"<laughs nervously>"`` → ``"▁<LAUGHS▁NERVOUSLY>"`` (spaced, the
    space before the tag included) or ``"<LAUGHS▁NERVOUSLY>"`` (the bare pieces of older tag sets)."""
    return (SPACE_PIECE if spaced else "") + "<" + tag_name(tag).upper().replace(" ", SPACE_PIECE) + ">"


def space_before_tags(text: str, delimiters: tuple[str, str] = DEFAULT_DELIMITERS) -> str:
    """``text`` with a space before every tag that follows a non-space (``"Hi!<laughs>"`` → ``"Hi! <laughs>"``),
    so that sentencepiece sees the "▁" a spaced tag piece starts with."""
    matches = [m for m in find_tags(text, delimiters) if m.start > 0 and not text[m.start - 1].isspace()]
    for m in reversed(matches):
        text = text[: m.start] + " " + text[m.start :]
    return text


def tag_words(tag: str) -> str:
    """The tag spelled out as the text it names, for word-based initialisation: ``"LAUGHS NERVOUSLY"``."""
    return tag_name(tag).upper()


def find_tags(text: str, delimiters: tuple[str, str] = DEFAULT_DELIMITERS) -> list[TagMatch]:
    """Every tag in ``text``, in order."""
    return [
        TagMatch(m.group(0), " ".join(m.group("name").split()).lower(), m.start(), m.end())
        for m in tag_regex(tuple(delimiters)).finditer(text)
    ]


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def variant_key(name: str) -> str:
    """Names with equal keys are variants of one tag: ``"laughs"`` and ``"laugh"`` → ``"laugh"``."""
    return " ".join(_singular(w) for w in name.split())


def parse_tag_list(text: str) -> list[str]:
    """``"<laughs>,<giggles>, sighs"`` -> ``["<laughs>", "<giggles>", "<sighs>"]``."""
    out = []
    for raw in text.split(","):
        raw = raw.strip()
        if raw:
            out.append(raw if raw.startswith("<") else f"<{raw}>")
    return out


def merge_variant_list(tags: Iterable[str], merge_variants: bool = True) -> list[str]:
    """Canonical spellings of ``tags`` with repeats removed; variants of a tag listed earlier (``<laugh>``
    after ``<Laughs>``) are the same tag when ``merge_variants``: ``["<laughs>"]``."""
    out: dict[str, str] = {}
    for tag in tags:
        name = tag_name(tag)
        out.setdefault(variant_key(name) if merge_variants else name, format_tag(name))
    return list(out.values())


def _read_yaml(path: str | Path):
    """YAML (or JSON) data of a file, with no constructor beyond plain data (``safe_load``)."""
    import yaml  # JSON is a subset of YAML

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise TagError(f"{path}: cannot read the tag map ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise TagError(f"{path}: the tag map is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise TagError(f"{path}: not a valid tag map{where} ({problem})") from None


def load_tag_map(source: str | Path | dict) -> dict[str, str | None]:
    """Read a YAML/JSON tag map (alias → canonical tag, or null to drop) into canonical spellings."""
    raw = source if isinstance(source, dict) else _read_yaml(source) or {}
    where = "tag map" if isinstance(source, dict) else str(source)
    if not isinstance(raw, dict):
        raise TagError(f"{where}: a tag map is a mapping alias -> canonical tag (or null)")
    if bad := [v for v in raw.values() if v is not None and not isinstance(v, str)]:
        raise TagError(f"{where}: tag map targets are tags or null, not {bad[0]!r}"[:200])
    return {format_tag(str(k)): None if v is None else format_tag(v) for k, v in raw.items()}


_MISSING = object()
_DROP_MARK = "\x00"


def _remove_drop_marks(text: str) -> str:
    """Delete dropped tags with the blanks around them, leaving one space between words."""

    def fill(m: re.Match) -> str:
        at_edge = m.start() == 0 or m.end() == len(text)
        return "" if at_edge or not (m.group(1) or m.group(2)) else " "

    return re.sub(f"([ \\t]*){_DROP_MARK}(?:[ \\t]*{_DROP_MARK})*([ \\t]*)", fill, text)


@dataclass
class TagSet:
    """Canonical tags (in token-id order), aliases and policies; serialises to the JSON tags file."""

    tags: list[str] = field(default_factory=list)
    aliases: dict[str, str | None] = field(default_factory=dict)
    multiword: str = "own"
    merge_variants: bool = True
    delimiters: tuple[str, str] = DEFAULT_DELIMITERS
    token_ids: dict[str, int] = field(default_factory=dict)
    spaced: bool = True  # pieces hold the space before the tag ("▁<LAUGHS>"); False: bare pieces ("<LAUGHS>")

    def __post_init__(self):
        self.tags = list(dict.fromkeys(format_tag(t) for t in self.tags))
        self.aliases = load_tag_map(self.aliases)
        self.delimiters = tuple(self.delimiters)
        self.token_ids = {format_tag(t): int(i) for t, i in self.token_ids.items()}
        if self.multiword not in MULTIWORD_POLICIES:
            raise TagError(f"multiword must be one of {MULTIWORD_POLICIES}, got {self.multiword!r}")
        for alias, target in self.aliases.items():
            if target is not None and target not in self.tags:
                raise TagError(f"alias {alias} -> {target}: {target} is not one of the tags {self.tags}")
        if stray := set(self.token_ids) - set(self.tags):
            raise TagError(f"token ids given for tags not in the set: {sorted(stray)}")
        self._by_key = self._variant_table({t: t for t in self.tags})
        self._alias_by_key = self._variant_table(self.aliases)

    def _variant_table(self, mapping: dict[str, str | None]) -> dict[str, str | None]:
        table: dict[str, str | None] = {}
        for tag, target in mapping.items():
            key = variant_key(tag_name(tag))
            if self.merge_variants and key in table and table[key] != target:
                raise TagError(f"{tag} is a variant of a tag that maps elsewhere ({table[key]}); "
                               "list only one of them, or set merge_variants=False")
            table[key] = target
        return table

    @property
    def pieces(self) -> list[str]:
        """Sentencepiece pieces of the canonical tags, in order."""
        return [self.piece(t) for t in self.tags]

    def piece(self, tag: str) -> str:
        """The sentencepiece piece of ``tag`` in this set's style (``spaced`` or bare)."""
        return tag_piece(tag, self.spaced)

    def resolve(self, tag: str) -> str | None:
        """Canonical spelling of any spelling of a known tag; None when the policy drops it.

        Raises UnknownTagError (listing the known tags) for a tag the set does not know.
        """
        name = tag_name(tag)
        found = self._lookup(name)
        words = name.split()
        if found is _MISSING and len(words) > 1 and self.multiword == "base":
            found = self._lookup(words[0])
        if found is _MISSING and len(words) > 1 and self.multiword == "drop":
            found = None
        if found is _MISSING:
            raise UnknownTagError(format_tag(name), self.tags)
        return found

    def _lookup(self, name: str):
        tag = f"<{name}>"
        if tag in self.aliases:
            return self.aliases[tag]
        if tag in self.tags:
            return tag
        if self.merge_variants:
            key = variant_key(name)
            for table in (self._by_key, self._alias_by_key):
                if key in table:
                    return table[key]
        return _MISSING

    def canonicalize(self, text: str, unknown: str = "error") -> str:
        """Rewrite every tag of ``text`` in its canonical spelling; dropped tags are removed.

        unknown: "error" raises UnknownTagError; "drop" removes unknown tags with a warning.
        """
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        marked = tag_regex(self.delimiters).sub(
            lambda m: self._resolve_or_drop(m.group(0), unknown) or _DROP_MARK, text
        )
        return _remove_drop_marks(marked) if _DROP_MARK in marked else marked

    def _resolve_or_drop(self, raw: str, unknown: str) -> str | None:
        try:
            return self.resolve(raw)
        except UnknownTagError as e:
            if unknown == "error":
                raise
            warnings.warn(f"{e} (dropped)", stacklevel=4)
            return None

    def to_dict(self) -> dict:
        """The JSON tags-file content (canonical tags with pieces and ids, aliases, policies)."""
        return {
            "format": TAGS_FILE_FORMAT,
            "version": TAGS_FILE_VERSION,
            "delimiters": list(self.delimiters),
            "multiword": self.multiword,
            "merge_variants": self.merge_variants,
            "spaced_pieces": self.spaced,
            "tags": [{"tag": t, "piece": self.piece(t), "id": self.token_ids.get(t)} for t in self.tags],
            "aliases": dict(self.aliases),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TagSet:
        """Inverse of ``to_dict``."""
        if data.get("format") != TAGS_FILE_FORMAT or data.get("version") != TAGS_FILE_VERSION:
            raise TagError(f"not a {TAGS_FILE_FORMAT} v{TAGS_FILE_VERSION} tags file")
        entries = data.get("tags", [])
        spaced = data.get("spaced_pieces")
        if spaced is None:  # written before the key existed: the pieces say the style (bare then)
            spaced = any(str(e.get("piece", "")).startswith(SPACE_PIECE) for e in entries)
        if not isinstance(spaced, bool):
            raise TagError(f"spaced_pieces must be true or false, not {spaced!r}")
        return cls(
            tags=[e["tag"] for e in entries],
            aliases=data.get("aliases", {}),
            multiword=data.get("multiword", "own"),
            merge_variants=data.get("merge_variants", True),
            delimiters=tuple(data.get("delimiters", DEFAULT_DELIMITERS)),
            token_ids={e["tag"]: e["id"] for e in entries if e.get("id") is not None},
            spaced=spaced,
        )

    def save(self, path: str | Path) -> None:
        """Write the JSON tags file."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TagSet:
        """Read a JSON tags file written by ``save``."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except TagError as e:
            raise TagError(f"{path}: {e}") from None
        except (UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:  # JSON errors included
            raise TagError(f"{path}: unreadable tags file ({e})") from None

    def with_token_ids(self, ids: dict[str, int]) -> TagSet:
        """A copy whose tags carry these token ids (from ``add_tag_pieces``)."""
        return TagSet(self.tags, self.aliases, self.multiword, self.merge_variants, self.delimiters, ids,
                      self.spaced)


def read_tagset(folder: str | Path) -> TagSet | None:
    """The tag set of a folder's ``tags.json`` (model, adapter, run or data folder); None when it has none."""
    path = Path(folder) / TAGS_FILE
    return TagSet.load(path) if path.is_file() else None
