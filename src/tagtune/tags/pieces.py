"""Append tag pieces to a sentencepiece model, keeping every existing id.

A ``.model`` file is a serialised ``ModelProto`` whose field 1 is the repeated list of pieces; protobuf
parsers append repeated-field entries in the order they appear, wherever they appear. So new pieces are
added by appending field-1 records to the file's bytes: every old byte (and so every old piece, id, score
and setting) is untouched, and the new pieces get the ids right after the current vocabulary. This needs
no protobuf package (sentencepiece does not depend on one).

Tags become USER_DEFINED pieces: sentencepiece matches them as whole strings before segmenting, the way
the official model treats its CJK characters. A spaced piece ("▁<LAUGHS>", ``tag_piece``) matches the tag
together with the space before it, so " <laughs>" is one id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from sentencepiece import SentencePieceProcessor

from tagtune.atomic import atomic_write_bytes
from tagtune.tags.vocab import TagSet, format_tag, tag_piece

PIECES_FIELD = 1  # ModelProto.pieces
PIECE_FIELD, SCORE_FIELD, TYPE_FIELD = 1, 2, 3  # ModelProto.SentencePiece.{piece, score, type}
USER_DEFINED = 4  # ModelProto.SentencePiece.Type
USER_DEFINED_SCORE = 0.0  # what the sentencepiece trainer gives user-defined pieces
WIRE_VARINT, WIRE_FIXED32, WIRE_BYTES = 0, 5, 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _piece_record(piece: str) -> bytes:
    """One serialised ``pieces`` entry: {piece, score, type=USER_DEFINED}."""
    text = piece.encode("utf-8")
    body = (
        _key(PIECE_FIELD, WIRE_BYTES) + _varint(len(text)) + text
        + _key(SCORE_FIELD, WIRE_FIXED32) + struct.pack("<f", USER_DEFINED_SCORE)
        + _key(TYPE_FIELD, WIRE_VARINT) + _varint(USER_DEFINED)
    )
    return _key(PIECES_FIELD, WIRE_BYTES) + _varint(len(body)) + body


def _read_model(model: bytes | str | Path) -> bytes:
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def add_tag_pieces(model: bytes | str | Path, tags: Iterable[str], spaced: bool = True) \
        -> tuple[bytes, dict[str, int]]:
    """Append each tag as a user-defined piece (``tag_piece(tag, spaced)``); returns the new model bytes and
    tag → id.

    Tags already in the model keep their id and are not added again, so extending an extended model
    appends only the new tags. Old pieces keep their ids.
    """
    data = _read_model(model)
    sp = SentencePieceProcessor(model_proto=data)
    size, ids, added = sp.GetPieceSize(), {}, []
    for tag in dict.fromkeys(format_tag(t) for t in tags):
        piece = tag_piece(tag, spaced)
        existing = sp.PieceToId(piece)
        if existing != sp.unk_id() and sp.IdToPiece(existing) == piece:
            ids[tag] = existing
            continue
        ids[tag] = size + len(added)
        added.append(piece)
    data += b"".join(_piece_record(p) for p in added)
    _verify(data, size + len(added), ids, spaced)
    return data, ids


def _verify(data: bytes, size: int, ids: dict[str, int], spaced: bool) -> None:
    sp = SentencePieceProcessor(model_proto=data)
    if sp.GetPieceSize() != size:
        raise RuntimeError(f"extended model has {sp.GetPieceSize()} pieces, expected {size}")
    for tag, i in ids.items():
        if sp.PieceToId(tag_piece(tag, spaced)) != i:
            raise RuntimeError(f"tag {tag} landed at id {sp.PieceToId(tag_piece(tag, spaced))}, expected {i}")


def extend_model_file(src: str | Path, dst: str | Path, tags: Iterable[str], spaced: bool = True) -> dict[str, int]:
    """Read ``src``, append the tag pieces, write ``dst`` atomically (``dst`` may equal ``src``)."""
    data, ids = add_tag_pieces(src, tags, spaced)
    atomic_write_bytes(dst, data)
    return ids


def extend_tokenizer(model: bytes | str | Path, base: TagSet | None, wanted: TagSet) -> tuple[bytes, TagSet]:
    """A base tokenizer extended for ``wanted``'s tags, and the merged tag set that describes it.

    ``base`` is the tag set the tokenizer already knows (None for an official model). Tags it knows keep their
    ids; the others are appended as pieces after the vocabulary, in the base's piece style when it has tags
    (one tokenizer, one style), else in ``wanted``'s. The merged set lists the base's tags, then the new ones,
    with both sets' aliases (``wanted``'s win) and ``wanted``'s spelling settings.
    """
    base = base or TagSet()
    spaced = base.spaced if base.tags else wanted.spaced
    new = [t for t in wanted.tags if t not in base.tags]
    data, ids = add_tag_pieces(model, new, spaced)
    merged = TagSet([*base.tags, *new], {**base.aliases, **wanted.aliases}, wanted.multiword,
                    wanted.merge_variants, wanted.delimiters, {**base.token_ids, **ids}, spaced)
    return data, merged
