"""The tiny model's training corpus: untagged synthetic speech, read back as waveforms, mels and texts.

The corpus comes from :func:`tagtune.synthetic.generate_corpus`: English and Mandarin read by the
pre-training voices only (espeak-ng when installed), so the fine-tune voice and the held-out voices stay
unseen by the base. It is regenerated at every build, so the repository ships only the seed. Clips are
split into train and validation per speaker and language, and every clip's conditioning prompt is another
clip of the same speaker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tagtune.audio import MelSpectrogram
from tagtune.synthetic import generate_corpus
from tagtune.synthetic.corpus import DEFAULT_TAGS, make_plans
from tagtune.synthetic.voices import FINE_TUNE, HELD_OUT, PRETRAIN, select_voices, voices_with

MANIFEST = "metadata.jsonl"
SILENCE_PAD_SAMPLES = 2048  # digital silence framing each clip: teaches the silence code and the stop
LANGUAGES = ("en", "zh")
ROLES = (PRETRAIN, FINE_TUNE, HELD_OUT)


@dataclass
class Clip:
    """One corpus clip in memory."""

    text: str
    speaker: str
    wav: torch.Tensor  # (N,) float32, 24 kHz
    mel: torch.Tensor  # (100, T) natural-log mel
    language: str = "en"
    events: tuple[tuple[str, int, int], ...] = ()  # (tag, start, end) in samples of ``wav`` (padding included)


def make_corpus(out_dir: Path, n_clips: int, seed: int, engine: str = "auto", chinese_fraction: float = 0.0) -> dict:
    """Generate an untagged corpus into ``out_dir``; returns its description (engine, voices, counts).

    Raises if a voice outside the engine's pre-training roster speaks in it (see :func:`check_voice_roles`).
    """
    info = generate_corpus(out_dir, n_clips=n_clips, seed=seed, untagged_fraction=1.0, engine=engine,
                           fmt="jsonl", chinese_fraction=chinese_fraction)
    roles = check_voice_roles(info.speaker_counts, info.engine)
    records = [json.loads(ln) for ln in (out_dir / MANIFEST).read_text(encoding="utf-8").splitlines() if ln]
    return {"engine": info.engine, "engine_version": info.engine_version, "n_clips": info.n_clips,
            "chinese_fraction": chinese_fraction, "languages": info.language_counts,
            "speakers": info.speaker_counts, "hours": round(info.total_seconds / 3600, 3),
            "script_sha256": script_digest((r["speaker"], r["language"], r["text"]) for r in records),
            "voice_roles": roles}


def script_digest(rows: Iterable[tuple[str, str, str]]) -> str:
    """SHA-256 of a corpus script: (speaker, language, text) per clip, in clip order."""
    return hashlib.sha256("\n".join("\t".join(row) for row in rows).encode("utf-8")).hexdigest()


def planned_script_digest(n_clips: int, seed: int, engine: str, chinese_fraction: float) -> str:
    """The script digest ``make_corpus`` would record today, computed without speaking a word.

    It differs from a base's recorded one when the generator's templates or voice roster changed since
    that base was built: the base is then no longer what its build command makes.
    """
    voices = select_voices(engine)
    plans = make_plans(n_clips, seed, list(DEFAULT_TAGS), 1.0, voices, chinese_fraction)
    return script_digest((p.voice, p.language, p.text) for p in plans)


def check_voice_roles(speakers, engine: str) -> dict[str, list[str]]:
    """The engine's voices per role; raises ValueError if a speaker is not a pre-training voice.

    The fine-tune voice and the held-out voices must never reach the base: a transfer measured on them
    would otherwise be a measurement on seen voices.
    """
    roles = {role: list(voices_with(role, engine)) for role in ROLES}
    barred = set(roles[FINE_TUNE]) | set(roles[HELD_OUT])
    wrong = sorted(s for s in speakers if s in barred or s not in roles[PRETRAIN])
    if wrong:
        raise ValueError(f"voices {wrong} are not {PRETRAIN} voices of {engine}; the base may only hear "
                         f"{roles[PRETRAIN]} (never the {FINE_TUNE} or {HELD_OUT} voices)")
    return roles


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
            events = tuple((e["tag"], e["start_sample"] + SILENCE_PAD_SAMPLES, e["end_sample"] + SILENCE_PAD_SAMPLES)
                           for e in rec.get("events") or ())
            clips.append(Clip(rec["text"], rec["speaker"], wav, mel(wav), rec.get("language", "en"), events))
    return clips


def split_by_speaker(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation clips; each (speaker, language) gives the same share to validation.

    A group of two or more clips gives at least one, so that both languages are measured on small corpora;
    the speaker keeps training clips of that language for the prompts.
    """
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for group in sorted({(c.speaker, c.language) for c in clips}):
        own = [i for i, c in enumerate(clips) if (c.speaker, c.language) == group]
        order = [own[j] for j in torch.randperm(len(own), generator=gen).tolist()]
        n_val = max(1, round(len(own) * val_fraction)) if len(own) >= 2 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


def by_language(clips: list[Clip], indices: list[int]) -> dict[str, list[int]]:
    """Language -> the ``indices`` of its clips (every language of LANGUAGES, maybe empty)."""
    return {lang: [i for i in indices if clips[i].language == lang] for lang in LANGUAGES}

