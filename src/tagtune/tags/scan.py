"""Corpus tag scans: which tag spellings occur, how often, and what they merge into.

``infer_tagset`` builds a TagSet from a corpus (canonical spelling = a user-map target, else the most
frequent spelling of each variant group, the longer
(plural) one on a tie; ids in order of frequency). ``scan_texts`` counts every raw
spelling and every canonical tag; it is what ``tagtune tags scan`` prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tagtune.tags.vocab import (
    DEFAULT_DELIMITERS,
    TagSet,
    UnknownTagError,
    find_tags,
    format_tag,
    load_tag_map,
    variant_key,
)


@dataclass
class TagScan:
    """Counts from one corpus scan, and the tag set the counts refer to."""

    tagset: TagSet
    raw_counts: Counter = field(default_factory=Counter)  # spelling as written ("<LAUGHS>") -> count
    canonical_counts: Counter = field(default_factory=Counter)  # canonical tag -> count
    merged_into: dict[str, str] = field(default_factory=dict)  # spelling as written -> canonical tag
    dropped: Counter = field(default_factory=Counter)  # spellings the map or multiword policy drops
    unknown: Counter = field(default_factory=Counter)  # spellings the tag set does not know
    texts: int = 0
    texts_with_tags: int = 0

    def variants(self) -> dict[str, list[str]]:
        """Canonical tag -> the raw spellings merged into it, most frequent first."""
        out: dict[str, list[str]] = {t: [] for t in self.canonical_counts}
        for raw, canonical in sorted(self.merged_into.items(), key=lambda kv: -self.raw_counts[kv[0]]):
            out[canonical].append(raw)
        return out

    def summary(self) -> str:
        """Human-readable report: one line per canonical tag with its merged spellings."""
        lines = [f"{self.texts_with_tags} of {self.texts} texts contain tags"]
        for tag, spellings in self.variants().items():
            detail = ", ".join(f"{s} x{self.raw_counts[s]}" for s in spellings)
            lines.append(f"  {tag:<24} {self.canonical_counts[tag]:>6}   <- {detail}")
        for title, counter in (("dropped", self.dropped), ("unknown", self.unknown)):
            if counter:
                lines.append(f"  {title}: " + ", ".join(f"{s} x{n}" for s, n in counter.most_common()))
        return "\n".join(lines)


def _grouping_name(name: str, aliases: dict, multiword: str) -> str | None:
    """The name a corpus spelling counts under before variant merging (None: dropped)."""
    tag = format_tag(name)
    if tag in aliases:
        return None if aliases[tag] is None else aliases[tag][1:-1]
    if " " in name and multiword == "base":
        return name.split()[0]
    return None if " " in name and multiword == "drop" else name


def infer_tagset(
    texts: Iterable[str],
    tag_map: str | Path | dict | None = None,
    multiword: str = "own",
    merge_variants: bool = True,
    delimiters: tuple[str, str] = DEFAULT_DELIMITERS,
    min_count: int = 1,
) -> TagSet:
    """Build the TagSet a corpus calls for; observed variants are recorded as aliases."""
    aliases = load_tag_map(tag_map or {})
    counts = Counter(m.name for t in texts for m in find_tags(t, delimiters))
    groups: dict[str, Counter] = {}
    for name, n in counts.items():
        if (target := _grouping_name(name, aliases, multiword)) is not None:
            groups.setdefault(variant_key(target) if merge_variants else target, Counter())[target] += n
    forced = {variant_key(t[1:-1]) if merge_variants else t[1:-1]: t for t in aliases.values() if t}
    chosen = []
    for key, names in groups.items():
        if (total := sum(names.values())) >= min_count:
            best = forced.get(key) or format_tag(min(names, key=lambda s: (-names[s], -len(s), s)))
            chosen.append((-total, best, key))
    tags = [best for _, best, _ in sorted(chosen)]
    canonical_of = {key: best for _, best, key in chosen}
    observed = {
        format_tag(name): canonical_of[variant_key(g) if merge_variants else g]
        for name in counts
        if (g := _grouping_name(name, aliases, multiword)) is not None
        and (variant_key(g) if merge_variants else g) in canonical_of
    }
    kept = {a: t for a, t in aliases.items() if t is None or t in tags}
    merged = {a: t for a, t in {**observed, **kept}.items() if a != t}
    return TagSet(tags, merged, multiword, merge_variants, tuple(delimiters))


def scan_texts(texts: Iterable[str], tagset: TagSet | None = None, **infer_kwargs) -> TagScan:
    """Count tags per raw spelling and per canonical tag.

    Without ``tagset`` one is inferred from the texts (``infer_kwargs`` go to ``infer_tagset``).
    """
    texts = list(texts)
    tagset = tagset if tagset is not None else infer_tagset(texts, **infer_kwargs)
    scan = TagScan(tagset, texts=len(texts))
    for text in texts:
        matches = find_tags(text, tagset.delimiters)
        scan.texts_with_tags += bool(matches)
        for m in matches:
            scan.raw_counts[m.raw] += 1
            try:
                canonical = tagset.resolve(m.raw)
            except UnknownTagError:
                scan.unknown[m.raw] += 1
                continue
            if canonical is None:
                scan.dropped[m.raw] += 1
            else:
                scan.canonical_counts[canonical] += 1
                scan.merged_into[m.raw] = canonical
    return scan
