"""Sentence packing of a piece list, equal to the official v1.5.0 ``split_sentences``.

Walk the pieces; close a chunk after a sentence-final piece once it holds more than two pieces. A chunk
that outgrows ``max_tokens`` is re-split at commas, else at hyphens, else cut into fixed-size parts (with
a warning). Finally adjacent chunks are merged greedily while they fit, so the GPT receives packs of up to
``max_tokens`` pieces.

Official quirk kept: when a closing piece is followed by a quote (``'`` / ``▁'``) the quote is appended
to the closing chunk *and* starts the next one (a loop index that is reassigned without effect).

Our addition: a chunk made only of tag pieces (and "▁") is merged into its neighbour, so a tag is never
synthesised on its own, even if that makes the pack exceed ``max_tokens`` by those few pieces.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection

DEFAULT_MAX_TOKENS = 120  # infer(); infer_fast() uses 100
SENTENCE_END_PIECES = (".", "!", "?", "▁.", "▁?", "▁...")  # "▁!" is not in the vocabulary
COMMA_PIECES = (",", "▁,")
HYPHEN_PIECES = ("-",)
QUOTE_PIECES = ("'", "▁'")
SPACE_PIECE = "▁"


def _split_by(pieces: list[str], split_pieces: tuple[str, ...], max_tokens: int) -> list[list[str]]:
    """The official ``split_sentences_by_token`` (recursive over commas and hyphens)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for i, piece in enumerate(pieces):
        current.append(piece)
        if len(current) <= max_tokens:
            if piece in split_pieces and len(current) > 2:
                if i + 1 < len(pieces) and pieces[i + 1] in QUOTE_PIECES:
                    current.append(pieces[i + 1])  # and it is visited again on the next step
                chunks.append(current)
                current = []
            continue
        chunks.extend(_split_oversized(current, split_pieces, max_tokens))
        current = []
    if current:
        chunks.append(current)
    return _merge(chunks, max_tokens)


def _split_oversized(chunk: list[str], split_pieces: tuple[str, ...], max_tokens: int) -> list[list[str]]:
    if not any(p in split_pieces for p in COMMA_PIECES) and any(p in chunk for p in COMMA_PIECES):
        return _split_by(chunk, COMMA_PIECES, max_tokens)
    if "-" not in split_pieces and "-" in chunk:
        return _split_by(chunk, HYPHEN_PIECES, max_tokens)
    warnings.warn(
        f"a sentence exceeds {max_tokens} tokens and has no comma or hyphen; cut into fixed-size parts",
        RuntimeWarning,
        stacklevel=4,
    )
    return [chunk[j:j + max_tokens] for j in range(0, len(chunk), max_tokens)]


def _merge(chunks: list[list[str]], max_tokens: int) -> list[list[str]]:
    merged: list[list[str]] = []
    for chunk in chunks:
        if not chunk:
            continue
        if merged and len(merged[-1]) + len(chunk) <= max_tokens:
            merged[-1] = merged[-1] + chunk
        else:
            merged.append(chunk)
    return merged


def _attach_lone_tags(chunks: list[list[str]], tag_pieces: Collection[str]) -> list[list[str]]:
    """Merge every chunk that holds only tags (and "▁") into the previous chunk, or the next if first."""
    out: list[list[str]] = []
    pending: list[str] = []  # lone-tag pieces found before any sentence
    for chunk in chunks:
        lone = any(p in tag_pieces for p in chunk) and all(p in tag_pieces or p == SPACE_PIECE for p in chunk)
        if lone and out:
            out[-1] = out[-1] + chunk
        elif lone:
            pending += chunk
        else:
            out.append(pending + chunk)
            pending = []
    if pending:
        out.append(pending)
    return out


def split_sentences(
    pieces: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, tag_pieces: Collection[str] = ()
) -> list[list[str]]:
    """Pack ``pieces`` into GPT sentences of at most ``max_tokens`` pieces (official v1.5.0 rules)."""
    if not pieces:
        return []
    chunks = _split_by(list(pieces), SENTENCE_END_PIECES, max_tokens)
    return _attach_lone_tags(chunks, set(tag_pieces)) if tag_pieces else chunks


# ------------------------------------------------------------------------------------------------ IndexTTS2
#
# IndexTTS2's ``split_segments`` differs from v1.5.0: a comma (or, without one, a hyphen) closes the running
# chunk as soon as it is seen, whatever its length, and the merge step may hold back the first
# ``quick_streaming_tokens`` pieces so that streaming starts on a short first segment.


def split_segments(
    pieces: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, quick_streaming_tokens: int = 0,
    tag_pieces: Collection[str] = (),
) -> list[list[str]]:
    """Pack ``pieces`` into GPT segments of at most ``max_tokens`` pieces (official IndexTTS2 rules)."""
    if not pieces:
        return []
    chunks = _segments_by(list(pieces), SENTENCE_END_PIECES, max_tokens, quick_streaming_tokens)
    return _attach_lone_tags(chunks, set(tag_pieces)) if tag_pieces else chunks


def _segments_by(pieces: list[str], split_pieces: tuple[str, ...], max_tokens: int, quick: int) -> list[list[str]]:
    """The official ``split_segments_by_token`` (recursive over commas and hyphens)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for i, piece in enumerate(pieces):
        current.append(piece)
        if not any(p in split_pieces for p in COMMA_PIECES) and any(p in current for p in COMMA_PIECES):
            parts = _segments_by(current, COMMA_PIECES, max_tokens, quick)
        elif "-" not in split_pieces and "-" in current:
            parts = _segments_by(current, HYPHEN_PIECES, max_tokens, quick)
        elif len(current) <= max_tokens:
            if piece in split_pieces and len(current) > 2:
                if i + 1 < len(pieces) and pieces[i + 1] in QUOTE_PIECES:
                    current.append(pieces[i + 1])  # and it is visited again on the next step
                chunks.append(current)
                current = []
            continue
        else:
            warnings.warn(f"a segment exceeds {max_tokens} tokens and has no comma or hyphen; cut into "
                          "fixed-size parts", RuntimeWarning, stacklevel=3)
            parts = [current[j:j + max_tokens] for j in range(0, len(current), max_tokens)]
        chunks.extend(parts)
        current = []
    if current:
        chunks.append(current)
    return _merge_segments(chunks, max_tokens, quick)


def _merge_segments(chunks: list[list[str]], max_tokens: int, quick: int) -> list[list[str]]:
    """Join neighbours that fit once ``quick`` pieces have passed, and always those within half the limit."""
    merged: list[list[str]] = []
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if not chunk:
            continue
        joined = len(merged[-1]) + len(chunk) if merged else None
        if joined is not None and ((joined <= max_tokens and seen > quick) or joined <= max_tokens / 2):
            merged[-1] = merged[-1] + chunk
        else:
            merged.append(chunk)
    return merged
