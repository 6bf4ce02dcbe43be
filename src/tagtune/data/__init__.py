"""Corpus ingestion (sources -> prepared shards) and the training-side reader."""

from tagtune.data.dataset import LengthBucketSampler, PreparedDataset, collate
from tagtune.data.decode import DecodeSettings, Rejection, decode_clip
from tagtune.data.encode import ClipEncoder, DVAEClipEncoder, EncodedText, TextEncoder
from tagtune.data.prepare import DataDirMismatch, PrepareSettings, prepare
from tagtune.data.sources import ColumnMap, Record, Source, open_source

__all__ = [
    "ClipEncoder", "ColumnMap", "DVAEClipEncoder", "DataDirMismatch", "DecodeSettings", "EncodedText",
    "LengthBucketSampler", "PrepareSettings", "PreparedDataset", "Record", "Rejection", "Source", "TextEncoder",
    "collate", "decode_clip", "open_source", "prepare",
]
