"""Everything about tags.

The vocabulary, pure Python: ``vocab`` (tag syntax, canonical forms, ``TagSet``), ``scan`` (a corpus's tags)
and ``pieces`` (tag pieces appended to a sentencepiece model; ``extend_tokenizer``). The rows, on torch:
``rows`` (new rows of the GPT's text tables: init formulas, growing a base, start rows, reading and writing
the rows forward uses), ``neutral`` (the fitted neutral row) and ``add`` (``tagtune tags add``); ``occurrences``
(where a clip's tags sit in its text and which codes their events cover).
This module exports the vocabulary only, so importing it never loads torch.
"""

from tagtune.tags.pieces import add_tag_pieces, extend_model_file, extend_tokenizer
from tagtune.tags.scan import TagScan, infer_tagset, scan_texts
from tagtune.tags.vocab import (
    TagError,
    TagMatch,
    TagSet,
    UnknownTagError,
    find_tags,
    format_tag,
    load_tag_map,
    read_tagset,
    tag_piece,
)

__all__ = [
    "TagError", "TagMatch", "TagScan", "TagSet", "UnknownTagError", "add_tag_pieces", "extend_model_file",
    "extend_tokenizer", "read_tagset",
    "find_tags", "format_tag", "infer_tagset", "load_tag_map", "scan_texts", "tag_piece",
]
