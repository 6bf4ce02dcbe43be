"""The tiny model's training corpus: untagged synthetic speech, read back as waveforms, mels and texts.

The corpus comes from :func:`tagtune.synthetic.generate_corpus` (several espeak-ng voices when installed);
it is regenerated at every build, so the repository ships only the seed. Clips are split into train and
validation per speaker, and every clip's conditioning prompt is another clip of the same speaker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tagtune.audio import MelSpectrogram
from tagtune.synthetic import generate_corpus

MANIFEST = "metadata.jsonl"
SILENCE_PAD_SAMPLES = 2048  # digital silence framing each clip: teaches the silence code and the stop


@dataclass
class Clip:
    """One corpus clip in memory."""

    text: str
    speaker: str
    wav: torch.Tensor  # (N,) float32, 24 kHz
    mel: torch.Tensor  # (100, T) natural-log mel


def make_corpus(out_dir: Path, n_clips: int, seed: int, engine: str = "auto") -> dict:
    """Generate an untagged corpus into ``out_dir``; returns its description (engine, voices, counts)."""
    info = generate_corpus(out_dir, n_clips=n_clips, seed=seed, untagged_fraction=1.0, engine=engine,
                           fmt="jsonl")
    return {"engine": info.engine, "engine_version": info.engine_version, "n_clips": info.n_clips,
            "speakers": info.speaker_counts, "hours": round(info.total_seconds / 3600, 3)}


def _read_wav(path: Path) -> torch.Tensor:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != 24000:
        raise ValueError(f"{path}: expected 24 kHz audio, got {sr} Hz")
    wav = np.pad(data.mean(axis=1), SILENCE_PAD_SAMPLES)
    return torch.from_numpy(np.ascontiguousarray(wav))


def load_clips(corpus_dir: Path, mel: MelSpectrogram | None = None) -> list[Clip]:
    """Read every clip of the manifest with its log-mel, in manifest order."""
    mel = mel or MelSpectrogram(precise=False)
    records = [json.loads(ln) for ln in (corpus_dir / MANIFEST).read_text(encoding="utf-8").splitlines() if ln]
    clips = []
    with torch.no_grad():
        for rec in records:
            wav = _read_wav(corpus_dir / rec["audio"])
            clips.append(Clip(rec["text"], rec["speaker"], wav, mel(wav)))
    return clips


def split_by_speaker(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation clips; each speaker gives the same share to validation."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for speaker in sorted({c.speaker for c in clips}):
        own = [i for i, c in enumerate(clips) if c.speaker == speaker]
        order = [own[j] for j in torch.randperm(len(own), generator=gen).tolist()]
        n_val = max(1, round(len(own) * val_fraction)) if len(own) > 2 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)

