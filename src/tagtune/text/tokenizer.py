"""Text → token ids, equal to the official IndexTTS v1.5.0 ``TextTokenizer``, plus tags.

encode(text): empty → []; a text whose stripped length is 1 goes to sentencepiece as it is; otherwise
canonicalise tags (when a TagSet is given) → normalise (tags shielded) → ``tokenize_by_cjk_char``
(CJK characters spaced out, everything else upper-cased) → a space before each tag (spaced tag sets) →
sentencepiece. A tag ``<laughs>`` thus reaches sentencepiece as `` <LAUGHS>`` and becomes the user-defined
piece ``▁<LAUGHS>`` of the extended model: one id, the word boundary before the tag included. Older tag sets
have bare pieces (``<LAUGHS>``): one id, preceded by the word-boundary piece "▁" when a space precedes it,
exactly like a CJK character.
"""

from __future__ import annotations

import re
from pathlib import Path

from sentencepiece import SentencePieceProcessor

from tagtune.errors import UserError
from tagtune.folders import TAGS_FILE
from tagtune.tags.vocab import SPACE_PIECE, UNKNOWN_POLICIES, TagSet, find_tags, space_before_tags
from tagtune.text.normalize import TextNormalizer
from tagtune.text.sentences import DEFAULT_MAX_TOKENS, split_segments, split_sentences

BOS_ID = 0  # also the GPT's start_text token
EOS_ID = 1  # also the GPT's stop_text token
PAD_ID = -1
DEFAULT_BPE_MODEL = "bpe.model"
CJK_RANGES = (
    "\u1100-\u11ff\u2e80-\ua4cf\ua840-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff65-\uffdc\U00020000-\U0002ffff"
)
_CJK_SPLIT_RE = re.compile(f"([{CJK_RANGES}])")


class TokenizerError(UserError, ValueError):
    """The tokenizer model and the tag set do not fit together."""


def tokenize_by_cjk_char(line: str, do_upper_case: bool = True) -> str:
    """Space out every CJK character, upper-case the rest: "你好 hi" → "你 好 HI" (official)."""
    parts = (p.strip() for p in _CJK_SPLIT_RE.split(line.strip()))
    return " ".join(p.upper() if do_upper_case else p for p in parts if p)


def _load_sentencepiece(bpe_model: str | Path | bytes) -> SentencePieceProcessor:
    """A loaded sentencepiece model; an absent, empty or unparsable one is a TokenizerError naming it."""
    if isinstance(bpe_model, bytes):
        name, proto = "tokenizer model (bytes)", bpe_model
    elif not Path(bpe_model).is_file():
        raise TokenizerError(f"tokenizer model not found: {bpe_model}")
    else:
        name, proto = str(bpe_model), Path(bpe_model).read_bytes()
    if not proto:  # sentencepiece would load nothing from empty bytes, and fail obscurely later
        raise TokenizerError(f"{name}: empty file, not a sentencepiece model")
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError):  # sentencepiece's message is an internal source location
        raise TokenizerError(f"{name}: not a sentencepiece model (it cannot be parsed: corrupt or truncated?)") \
            from None
    if sp.GetPieceSize() == 0:
        raise TokenizerError(f"{name}: a sentencepiece model without pieces")
    return sp


class TextTokenizer:
    """Sentencepiece tokenizer with the official preprocessing and, optionally, expressive tags.

    bpe_model: path to ``bpe.model`` or its bytes (e.g. from ``add_tag_pieces``).
    tagset: the tags to canonicalise; each tag's piece must be in the model.
    normalizer: "auto" (a TextNormalizer, wetext when installed), a TextNormalizer, or None (none, as in
        the official ``TextTokenizer(vocab_file)`` default).
    unknown_tags: "error" raises UnknownTagError for a tag outside ``tagset``; "drop" removes it and warns.
    """

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    pad_token_id = PAD_ID

    def __init__(self, bpe_model: str | Path | bytes, tagset: TagSet | None = None,
                 normalizer: TextNormalizer | str | None = "auto", unknown_tags: str = "error"):
        self.sp = _load_sentencepiece(bpe_model)
        self.normalizer = TextNormalizer() if normalizer == "auto" else normalizer
        self.tagset = tagset
        if unknown_tags not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_tags must be one of {UNKNOWN_POLICIES}, got {unknown_tags!r}")
        self.unknown_tags = unknown_tags
        self.tag_ids = self._check_tags(tagset) if tagset is not None else {}
        self._tag_id_set = set(self.tag_ids.values())

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, config=None, normalizer: TextNormalizer | str | None = "auto",
                       unknown_tags: str = "error") -> TextTokenizer:
        """The tokenizer of a checkpoint folder: its ``bpe.model`` (``config.dataset.bpe_model`` when a
        ModelConfig is given) and, in a tag-extended folder, its ``tags.json``."""
        model_dir = Path(model_dir)
        bpe_name = config.dataset.bpe_model if config is not None else DEFAULT_BPE_MODEL
        tags_path = model_dir / TAGS_FILE
        tagset = TagSet.load(tags_path) if tags_path.is_file() else None
        return cls(model_dir / bpe_name, tagset, normalizer=normalizer, unknown_tags=unknown_tags)

    def _check_tags(self, tagset: TagSet) -> dict[str, int]:
        ids = {}
        for tag in tagset.tags:
            piece = tagset.piece(tag)
            ids[tag] = self.sp.PieceToId(piece)
            if ids[tag] == self.sp.unk_id():
                raise TokenizerError(f"tag {tag}: piece {piece!r} is not in the tokenizer model; "
                                     "extend the model with add_tag_pieces first")
            if tag in tagset.token_ids and tagset.token_ids[tag] != ids[tag]:
                raise TokenizerError(f"tag {tag}: the tags file says id {tagset.token_ids[tag]}, "
                                     f"the tokenizer model has it at {ids[tag]}")
        return ids

    @property
    def vocab_size(self) -> int:
        """Number of pieces (tags included); the GPT's text tables have one row more."""
        return self.sp.GetPieceSize()

    @property
    def unk_token_id(self) -> int:
        return self.sp.unk_id()

    @property
    def tag_pieces(self) -> set[str]:
        """The pieces that stand for tags."""
        return {self.tagset.piece(t) for t in self.tag_ids}

    @property
    def tag_space_id(self) -> int | None:
        """Id of the bare "▁" piece sentencepiece writes before a tag typed after a space; None when the tag
        pieces hold that space themselves (spaced tag sets) or the model has no such piece."""
        if self.tagset is not None and self.tagset.spaced:
            return None
        space = self.sp.PieceToId(SPACE_PIECE)
        return None if space == self.sp.unk_id() else space

    def preprocess(self, text: str) -> str:
        """The exact string handed to sentencepiece (after tags, normalisation and CJK splitting)."""
        if len(text.strip()) == 1:
            return text
        if self.tagset is not None:
            text = self.tagset.canonicalize(text, unknown=self.unknown_tags)
        if self.normalizer is not None:
            text = self.normalizer.normalize(text)
        text = tokenize_by_cjk_char(text)
        if self.tagset is not None and self.tagset.spaced:
            text = space_before_tags(text)
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start/stop tokens)."""
        return self._encode(text, int)

    def tokenize(self, text: str) -> list[str]:
        """Pieces of ``text`` as sentencepiece emits them (an unknown stretch keeps its own text, e.g.
        "a", where ``encode`` gives unk); ``convert_tokens_to_ids`` of these equals ``encode(text)``."""
        return self._encode(text, str)

    def _encode(self, text: str, out_type: type) -> list:
        if not text:
            return []
        prepared = self.preprocess(text)
        out = self.sp.Encode(prepared, out_type=out_type)
        self._check_tags_survived(prepared, out if out_type is int else self.convert_tokens_to_ids(out))
        return out

    def _check_tags_survived(self, prepared: str, ids: list[int]) -> None:
        if not self.tag_ids:
            return
        expected = sum(1 for m in find_tags(prepared) if f"<{m.name}>" in self.tag_ids)
        found = sum(1 for i in ids if i in self._tag_id_set)
        if found != expected:  # would train or speak garbage; never let it pass silently
            raise RuntimeError(f"{expected} tags in {prepared!r} but {found} tag ids after sentencepiece")

    def without_tags(self, ids: list[int]) -> list[int]:
        """``ids`` with every tag removed, and the bare "▁" piece sentencepiece wrote before it: the text as the
        model reads it untagged (tag guidance decodes against it, ``generation/guidance.py``)."""
        space, out = self.tag_space_id, []
        for i in ids:
            if i not in self._tag_id_set:
                out.append(i)
            elif out and space is not None and out[-1] == space:
                out.pop()
        return out

    def convert_tokens_to_ids(self, pieces: list[str] | str) -> list[int]:
        """Piece strings → ids (unknown pieces → unk), as the official inference does."""
        pieces = [pieces] if isinstance(pieces, str) else pieces
        return [self.sp.PieceToId(p) for p in pieces]

    def convert_ids_to_tokens(self, ids: list[int] | int) -> list[str]:
        """Ids → piece strings."""
        ids = [ids] if isinstance(ids, int) else ids
        return [self.sp.IdToPiece(int(i)) for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Plain sentencepiece decoding, for reading ids: upper-case, CJK characters space-separated."""
        return self.sp.Decode([int(i) for i in ids])

    def word_piece_ids(self, word: str) -> list[int]:
        """Ids of a spelled-out word without the bare "▁" and unk pieces (for tag-row initialisation)."""
        ids = self.sp.Encode(tokenize_by_cjk_char(word), out_type=int)
        skip = {self.sp.PieceToId(SPACE_PIECE), self.sp.unk_id()}
        return [i for i in ids if i not in skip]

    def split_sentences(self, pieces: list[str], max_tokens: int = DEFAULT_MAX_TOKENS) -> list[list[str]]:
        """Official v1.5.0 sentence packing of a piece list; tags stay with their sentence."""
        return split_sentences(pieces, max_tokens, tag_pieces=self.tag_pieces)

    def split_segments(self, pieces: list[str], max_tokens: int = DEFAULT_MAX_TOKENS,
                       quick_streaming_tokens: int = 0) -> list[list[str]]:
        """Official IndexTTS2 segment packing of a piece list; tags stay with their segment."""
        return split_segments(pieces, max_tokens, quick_streaming_tokens, tag_pieces=self.tag_pieces)
