"""One shard of work: records -> checked text, decoded audio, mel + codes -> a shard file.

Text is checked first (cheap, in this process), so audio of a clip with a bad transcript is never decoded.
Decoding runs in worker processes when a pool is given; the clip encoder (DVAE, or IndexTTS-2's w2v-BERT +
semantic codec) runs here, batched.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.audio import HOP
from tagtune.data.decode import (
    MODEL_SAMPLE_RATE,
    TOO_LONG,
    DecodedClip,
    DecodeSettings,
    Rejection,
    decode_clip_info,
    map_events,
)
from tagtune.data.encode import BAD_RECORD, ClipEncoder, EncodedText, TextEncoder, encode_text
from tagtune.data.shards import MELS, write_shard
from tagtune.data.sources import Record, Source


@dataclass(frozen=True)
class ShardJob:
    """Records ``start..stop-1`` of the source, written to ``path`` with fingerprint ``fingerprint``."""

    index: int
    start: int
    stop: int
    path: Path
    fingerprint: str


def _reject(out: list[dict], index: int, rec: Record, why: Rejection) -> None:
    out.append({"index": index, "source_id": rec.source_id, "reason": why.reason, "detail": why.detail})


def _texts(job: ShardJob, records: list[Record], text_encoder: TextEncoder, max_text_tokens: int,
           rejected: list[dict]) -> dict[int, EncodedText]:
    """Encode every transcript of the shard; failures go to ``rejected``."""
    ok = {}
    for i, rec in enumerate(records):
        if rec.error:
            _reject(rejected, job.start + i, rec, Rejection(BAD_RECORD, rec.error))
            continue
        enc = encode_text(rec.text, text_encoder, max_text_tokens)
        if isinstance(enc, Rejection):
            _reject(rejected, job.start + i, rec, enc)
        else:
            ok[i] = enc
    return ok


def _decode_all(blobs: list, settings: DecodeSettings, pool: Executor | None) -> list:
    if pool is None:
        return [decode_clip_info(b, settings) for b in blobs]
    return list(pool.map(decode_clip_info, blobs, [settings] * len(blobs), chunksize=4))


def run_shard(job: ShardJob, source: Source, records: list[Record], clip_encoder: ClipEncoder,
              text_encoder: TextEncoder, settings, pool: Executor | None = None) -> None:
    """Prepare records ``job.start..job.stop-1`` and write the shard atomically.

    ``settings`` is a :class:`tagtune.data.prepare.PrepareSettings`.
    """
    recs = records[job.start : job.stop]
    rejected: list[dict] = []
    texts = _texts(job, recs, text_encoder, settings.max_text_tokens, rejected)
    keep = sorted(texts)
    blobs = source.audio(job.start, job.stop)
    decoded = _decode_all([blobs[i] for i in keep], settings.decode_settings(), pool)
    clips: dict[int, DecodedClip] = {}
    for i, clip in zip(keep, decoded):
        if isinstance(clip, Rejection):
            _reject(rejected, job.start + i, recs[i], clip)
        else:
            clips[i] = clip
    wavs = {i: c.wav for i, c in clips.items()}
    order = sorted(wavs)
    encoded = clip_encoder.encode([wavs[i] for i in order]) if order else []
    # frames kept of each clip's conditioning input (an encoder with its own frame rate says how many)
    crop = getattr(clip_encoder, "cond_frames", cond_frames)(settings.cond_max_seconds)
    examples, arrays = [], []
    for i, (mel, codes) in zip(order, encoded):
        if codes.numel() > settings.max_mel_tokens:
            why = Rejection(TOO_LONG, f"{codes.numel()} codes > {settings.max_mel_tokens}")
            _reject(rejected, job.start + i, recs[i], why)
            continue
        events = map_events(recs[i].events, clips[i], len(wavs[i]), MODEL_SAMPLE_RATE)
        examples.append(_example(job.start + i, recs[i], texts[i], clips[i], codes, events))
        arrays.append({"text_ids": torch.tensor(texts[i].ids), "codes": codes, "wav_len": len(wavs[i]),
                       "mel": mel[:, :crop]})  # (n_mels, T<=max); IndexTTS-2: (1024, T<=max) features
    rejected.sort(key=lambda r: r["index"])
    n_mels = encoded[0][0].shape[0] if encoded else 0
    meta = {"fingerprint": job.fingerprint, "start": job.start, "stop": job.stop, "rejected": rejected}
    write_shard(job.path, examples, arrays, meta, n_mels, getattr(clip_encoder, "cond_name", MELS))


def _example(index: int, rec: Record, text: EncodedText, clip: DecodedClip, codes: torch.Tensor, events) -> dict:
    """The JSON record of one accepted clip (the arrays live in the shard's tensors)."""
    wav_len = len(clip.wav)
    return {
        "index": index,
        "source_id": rec.source_id,
        "text": text.text,
        "speaker": rec.speaker,
        "events": events,  # boundaries in this clip's 24 kHz samples
        "tags": text.tags,
        "seconds": round(wav_len / MODEL_SAMPLE_RATE, 4),
        "n_text": len(text.ids),
        "n_codes": int(codes.numel()),
        "audio_sha256": clip.digest,  # finds clips whose audio is identical (duplicates) at the merge
    }


def cond_frames(seconds: float | None) -> int | None:
    """Mel frames in ``seconds`` of 24 kHz audio (None: no limit)."""
    return None if seconds is None else int(math.floor(seconds * MODEL_SAMPLE_RATE / HOP)) + 1
