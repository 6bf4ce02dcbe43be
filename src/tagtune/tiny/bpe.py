"""A small sentencepiece unigram ``bpe.model`` laid out like the official one.

Official layout: 0 ``<s>``, 1 ``</s>``, 2 ``<unk>``, then user-defined symbols (CJK characters, matched
whole), then the learned pieces with the lone word-boundary piece "▁" among the first. Training text is
written the official way: normalised, CJK characters spaced out, everything else upper-cased.

The user-defined symbols are every CJK character the corpus generator can write (plus a few frequent ones),
so no Chinese corpus text maps to ``<unk>`` whichever clips a seed draws.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import sentencepiece as spm

from tagtune.synthetic.script import ZH_SHORT_TEMPLATES, ZH_SLOTS, ZH_TEMPLATES
from tagtune.text.tokenizer import CJK_RANGES, tokenize_by_cjk_char

DEFAULT_VOCAB_SIZE = 512
FREQUENT_CJK = "一不个中了人们他你到在好我是有的这说"
_CJK_RE = re.compile(f"[{CJK_RANGES}]")


def generator_cjk() -> str:
    """Every CJK character the synthetic corpus generator's Mandarin templates and slots can write."""
    text = "".join(ZH_TEMPLATES + ZH_SHORT_TEMPLATES) + "".join(w for words in ZH_SLOTS.values() for w in words)
    return "".join(_CJK_RE.findall(text))


# CJK characters as user-defined symbols, in Unicode order as in the official model, so a Chinese character
# costs "▁" + one piece here as there, and every character of the generator has its own piece.
USER_SYMBOLS = tuple(sorted(set(FREQUENT_CJK + generator_cjk())))
TRAINER_SETTINGS = dict(
    model_type="unigram",
    character_coverage=1.0,
    bos_id=0,
    eos_id=1,
    unk_id=2,
    pad_id=-1,
    num_threads=1,  # one thread: the EM statistics are summed in a fixed order, so the model is reproducible
    input_sentence_size=0,  # use every sentence, no random sampling
    shuffle_input_sentence=False,
    hard_vocab_limit=False,  # tiny test corpora may not support the requested size; the model says what it got
    minloglevel=2,
)


def official_text(text: str, normalizer=None) -> str:
    """A transcript as the official tokenizer hands it to sentencepiece (normaliser optional)."""
    if normalizer is not None:
        text = normalizer.normalize(text)
    return tokenize_by_cjk_char(text)


def train_bpe(lines: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
              user_symbols: Iterable[str] = USER_SYMBOLS) -> bytes:
    """Train a unigram model on already-prepared lines; returns the serialised ``bpe.model`` bytes."""
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise ValueError("no text to train the tokenizer on")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        user_defined_symbols=list(user_symbols),
        **TRAINER_SETTINGS,
    )
    return out.getvalue()


def check_layout(model: bytes, user_symbols: Iterable[str] = USER_SYMBOLS) -> None:
    """Raise if ``model`` does not have the official piece layout (special ids, symbols, lone "▁")."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    head = [sp.IdToPiece(i) for i in range(3)]
    if head != ["<s>", "</s>", "<unk>"]:
        raise ValueError(f"tokenizer ids 0..2 are {head}, expected <s>, </s>, <unk>")
    symbols = list(user_symbols)
    got = [sp.IdToPiece(3 + i) for i in range(min(len(symbols), sp.GetPieceSize() - 3))]
    if got != symbols:
        raise ValueError(f"user-defined symbols not at ids 3..{2 + len(symbols)}: {got}")
    if sp.PieceToId("▁") == sp.unk_id():
        raise ValueError("the tokenizer lacks the lone word-boundary piece '▁'")
