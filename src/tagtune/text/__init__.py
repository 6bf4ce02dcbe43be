"""Text frontend: official IndexTTS v1.5.0 normalisation and tokenisation, plus expressive tags."""

from .grow import grow_text_rows
from .normalize import TextNormalizer
from .scan import TagScan, infer_tagset, scan_texts
from .sentences import split_sentences
from .spm_extend import add_tag_pieces, extend_model_file
from .tags import (
    TagError,
    TagMatch,
    TagSet,
    UnknownTagError,
    find_tags,
    format_tag,
    load_tag_map,
    tag_piece,
)
from .tokenizer import TextTokenizer, TokenizerError, tokenize_by_cjk_char

__all__ = [
    "TagError", "TagMatch", "TagScan", "TagSet", "TextNormalizer", "TextTokenizer", "TokenizerError",
    "UnknownTagError", "add_tag_pieces", "extend_model_file", "find_tags", "format_tag", "grow_text_rows",
    "infer_tagset", "load_tag_map", "scan_texts", "split_sentences", "tag_piece", "tokenize_by_cjk_char",
]
