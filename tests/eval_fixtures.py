"""A tiny tagged corpus with exact event boundaries, prepared by the real pipeline for the evaluation tests.

``build_eval_data(root, checkpoint_dir)`` extends a base model (the shipped tiny base) with three tags
(``add_tags``), writes short clips of built-in babble with a procedural giggle, laugh or sigh spliced in at the
tag (its sample span recorded as the clip's event), and prepares them with the base's DVAE. Clips stay under
60 codes, which keeps scoring and generation cheap. Cached under pytest's base temp dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TAGS = ["<laughs>", "<giggles>", "<sighs>"]
WORDS = ["HELLO", "WORLD", "THIS", "IS", "WELL", "THAT", "FUNNY", "IT", "COSTS", "DOLLARS", "SPEAKING"]
VOICES = ("builtin-f1", "builtin-m1")
N_CLIPS = 144  # enough training clips for the code-level detector to tell babble from events
SAMPLE_RATE = 24000
MAX_SECONDS = 2.4  # 60 codes of 1024 samples is 2.56 s
GAP_S = 0.08


def _speech(word: str, voice: str) -> np.ndarray:
    from tagtune.synthetic.babble import babble
    from tagtune.synthetic.voices import VOICES as TABLE

    return babble(word.lower(), TABLE[voice], SAMPLE_RATE)[: int(0.7 * SAMPLE_RATE)]


def _clip(k: int, rng: np.random.Generator) -> tuple[np.ndarray, str, list[dict]]:
    """Audio, text and events of clip k: every third clip untagged, the others one tag between two words."""
    from tagtune.synthetic.events import make_event
    from tagtune.synthetic.voices import VOICES as TABLE

    voice = VOICES[k % 2]
    first, second = (WORDS[int(i)] for i in rng.integers(0, len(WORDS), 2))
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts, text, events = [gap, _speech(first, voice), gap], first, []
    if k % 3:
        tag = TAGS[(k // 3 + k) % 3]
        sound = make_event(tag.strip("<>"), rng, SAMPLE_RATE, 0.08, f0=TABLE[voice].f0)
        start = sum(len(p) for p in parts)
        events.append({"tag": tag.strip("<>"), "start_sample": start, "end_sample": start + len(sound)})
        parts += [sound, gap]
        text += f" {tag}"
    tail = _speech(second, voice)
    room = int(MAX_SECONDS * SAMPLE_RATE) - sum(len(p) for p in parts) - len(gap)
    if room > len(tail) // 2:
        parts += [tail[:room], gap]
        text += f" {second}"
    audio = np.concatenate(parts) + 3e-4 * rng.standard_normal(sum(len(p) for p in parts)).astype(np.float32)
    return audio.astype(np.float32), text.lower().capitalize() + ".", events


def _write_corpus(folder: Path) -> Path:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(N_CLIPS):
        audio, text, events = _clip(k, rng)
        sf.write(folder / f"clip{k:03d}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio": f"clip{k:03d}.wav", "text": text, "speaker": VOICES[k % 2], "events": events})
    listing = folder / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return listing


def build_eval_data(root: Path, checkpoint_dir: Path) -> tuple[Path, Path]:
    """``(tagged model folder, prepared data folder)`` under ``root`` (reused when already there)."""
    from tagtune.checkpoint import folder_fingerprint
    from tagtune.data import PrepareSettings, open_source, prepare
    from tagtune.data.encoders import TokenizerTextEncoder, clip_encoder_from_model
    from tagtune.tags.add import add_tags
    from tagtune.tags.vocab import TagSet
    from tagtune.text.tokenizer import TextTokenizer

    model_dir, data_dir = root / "tagged", root / "data"
    if (data_dir / "manifest.json").is_file():
        return model_dir, data_dir
    add_tags(checkpoint_dir, TAGS, model_dir)
    listing = _write_corpus(root / "corpus")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("bpe.model", "tags.json"):
        shutil.copy(model_dir / name, data_dir / name)
    tokenizer = TextTokenizer(data_dir / "bpe.model", TagSet.load(data_dir / "tags.json"), normalizer=None)
    settings = PrepareSettings(max_text_tokens=40, max_mel_tokens=60, val_fraction=0.34, cond_max_seconds=2.0,
                               shard_size=32, seed=3)
    manifest = prepare(open_source(listing), data_dir, clip_encoder_from_model(checkpoint_dir, device="cpu"),
                       TokenizerTextEncoder(tokenizer), settings, progress=False,
                       base_checkpoint_hash=folder_fingerprint(checkpoint_dir))
    manifest |= {"base_checkpoint": {"dir": str(checkpoint_dir), "hash": manifest["base_checkpoint_hash"]},
                 "tokenizer": "bpe.model", "tags_file": "tags.json"}
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return model_dir, data_dir


@pytest.fixture(scope="session")
def eval_data(shipped_base, tmp_path_factory) -> tuple[Path, Path]:
    return build_eval_data(tmp_path_factory.getbasetemp() / "eval-corpus", shipped_base)
