"""Text frontend, pure text (no torch): official IndexTTS v1.5.0 normalisation, tokenisation and sentence
packing (and IndexTTS2's segment packing), with expressive tags shielded from the normaliser and kept whole."""

from tagtune.text.normalize import TextNormalizer
from tagtune.text.sentences import split_segments, split_sentences
from tagtune.text.tokenizer import TextTokenizer, TokenizerError, tokenize_by_cjk_char

__all__ = ["TextNormalizer", "TextTokenizer", "TokenizerError", "split_segments", "split_sentences",
           "tokenize_by_cjk_char"]
