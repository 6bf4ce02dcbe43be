"""Small corpora in every source format, and tiny encoders, for the tests of ``tagtune.data``.

(No tests here; other ``test_data_*`` files import it.)
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch

from tagtune.config import DVAEConfig
from tagtune.data.encode import EncodedText
from tagtune.data.encoders import dvae_clip_encoder
from tagtune.models.dvae import DiscreteVAE

TOY_TAGS = ("<laughs>", "<sighs>", "<giggles>")
TOY_UNK_CHAR = "§"  # the toy tokenizer has no piece for it
TAG_RE = re.compile(r"<[a-z]+>")


def speechy(seconds: float, sr: int = 24000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A deterministic voiced-looking signal (harmonics under a syllable envelope), (N,) or (N, C)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 40 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    x = 0.3 * x * (0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t)) + 0.01 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)


def wav_bytes(x: np.ndarray, sr: int = 24000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


class ToyTextEncoder:
    """Characters -> ids 3..98, tags -> ids 100+, "§" -> unk (2)."""

    identity = "toy-text-v1"

    def __call__(self, text: str) -> EncodedText:
        ids, tags, pos = [], [], 0
        for m in list(TAG_RE.finditer(text)) + [None]:
            chunk = text[pos : m.start() if m else len(text)]
            ids += [2 if c == TOY_UNK_CHAR else 3 + ord(c.upper()) % 96 for c in chunk]
            if m:
                tag = m.group(0)
                ids.append(100 + TOY_TAGS.index(tag))
                tags.append(tag)
                pos = m.end()
        return EncodedText(ids=ids, tags=tags, has_unk=2 in ids, normalized=text.upper())


def tiny_clip_encoder(batch_size: int = 4):
    """The real log-mel + a tiny random DiscreteVAE (128 codes), seeded."""
    torch.manual_seed(0)
    dvae = DiscreteVAE(DVAEConfig(hidden_dim=32, codebook_dim=16, num_tokens=128, num_resnet_blocks=1))
    return dvae_clip_encoder(dvae.eval(), device="cpu", batch_size=batch_size)


# ------------------------------------------------------------------------------------------ corpora

CLIPS = [  # (id, text, speaker, seconds, source rate)
    ("a1", "Hello there <laughs> friend.", "anna", 1.2, 24000),
    ("a2", "A quiet evening.", "anna", 0.9, 44100),
    ("a3", "<sighs> Not again.", "anna", 1.5, 16000),
    ("b1", "Good morning!", "ben", 1.1, 22050),
    ("b2", "That is <laughs> funny.", "ben", 0.8, 24000),
    ("b3", "See you soon. <sighs>", "ben", 1.3, 48000),
]


def write_clip_files(folder: Path, clips=CLIPS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (cid, _, _, sec, sr) in enumerate(clips):
        paths.append(folder / f"{cid}.wav")
        sf.write(paths[-1], speechy(sec, sr, seed=n), sr)
    return paths


def write_parquet(path: Path, clips=CLIPS, with_speaker: bool = False, row_group_size: int = 2) -> Path:
    """Elise layout: audio = struct{bytes, path}, text, duration (speaker only if asked)."""
    cols = {
        "audio": [{"bytes": wav_bytes(speechy(c[3], c[4], seed=n), c[4]), "path": f"{c[0]}.wav"}
                  for n, c in enumerate(clips)],
        "text": [c[1] for c in clips],
        "duration": [c[3] for c in clips],
    }
    if with_speaker:
        cols["speaker"] = [c[2] for c in clips]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def write_ljspeech(root: Path, clips=CLIPS, normalized: bool = True, beside: bool = False) -> Path:
    write_clip_files(root if beside else root / "wavs", clips)
    lines = [f"{c[0]}|raw {c[1]}|{c[1]}" if normalized else f"{c[0]}|{c[1]}" for c in clips]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """CSV (header from the first row) or JSONL, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        keys = list(rows[0])
        path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n"
                                                        for r in rows), encoding="utf-8")
    return path


def good_manifest_rows(folder: Path, clips=CLIPS) -> list[dict]:
    paths = write_clip_files(folder / "audio", clips)
    return [{"audio": str(p.relative_to(folder)), "text": c[1], "speaker": c[2]} for p, c in zip(paths, clips)]
