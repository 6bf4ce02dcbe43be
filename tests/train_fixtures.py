"""A tiny tagged corpus prepared by the real data pipeline, shared by the training and export tests.

``build_data_dir(root, checkpoint_dir)`` writes synthetic clips (two voices, tones with noise) and runs
``tagtune prepare``'s own entry point with that model and two tags. Fixtures: ``tiny_data`` (the corpus
prepared for the shipped base) and ``trained_run`` (a short training run on it). Cached under pytest's base
temp dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TAGS = ["<laughs>", "<sighs>"]
WORDS = ["HELLO", "WORLD", "THIS", "IS", "WELL", "THAT", "FUNNY", "IT", "COSTS", "DOLLARS", "SPEAKING"]
N_CLIPS = 40
SAMPLE_RATE = 24000


def _sentence(rng: np.random.Generator, k: int) -> str:
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(2, 6)))]
    if k % 3 == 0:
        words.insert(int(rng.integers(0, len(words))), TAGS[(k // 3) % 2])
    return " ".join(words).lower().capitalize() + "."


def _clip(rng: np.random.Generator, speaker: int) -> np.ndarray:
    seconds = float(rng.uniform(0.8, 2.3))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = (140.0 if speaker == 0 else 220.0) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(h * phase) / h for h in range(1, 6))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * np.minimum(t / seconds, 1.0)))
    wav = 0.25 * envelope * voiced + 0.02 * rng.standard_normal(len(t))
    return wav.astype(np.float32)


def _write_corpus(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(N_CLIPS):
        speaker = k % 2
        sf.write(folder / f"clip{k:03d}.wav", _clip(rng, speaker), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio": f"clip{k:03d}.wav", "text": _sentence(rng, k), "speaker": f"spk{speaker}"})
    listing = folder / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return listing


def build_data_dir(root: Path, checkpoint_dir: Path) -> Path:
    """Prepare the tiny corpus into ``root/data`` with the real ``prepare`` path (reused when already there)."""
    from tagtune.data.for_model import prepare_for_model

    data_dir = root / "data"
    if (data_dir / "manifest.json").is_file():
        return data_dir
    listing = _write_corpus(root / "corpus")
    prepare_for_model(checkpoint_dir, str(listing), data_dir, tags=list(TAGS), progress=False,
                      val_fraction=0.2, cond_max_seconds=2.0, shard_size=16, seed=3)
    return data_dir


def with_events(item: dict) -> dict:
    """A tagged item of ``tiny_data`` given recorded event boundaries (its clips are tones without events): one
    0.2 s event per tag, spread evenly over the clip in text order."""
    if not item["has_tag"]:
        return item
    wav_len, tags = int(item["wav_len"]), item["tags"]
    starts = [wav_len * (k + 1) // (len(tags) + 1) for k in range(len(tags))]
    return {**item, "events": [{"tag": t, "start_sample": s, "end_sample": min(wav_len, s + 4800)}
                               for t, s in zip(tags, starts)]}


@pytest.fixture(scope="session")
def tiny_data(shipped_base, tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.getbasetemp() / "train-corpus", shipped_base)


RUN_CONFIG = {
    "seed": 11,
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "optim": {"lr": 1e-2},  # the base is trained: a high rate makes eight steps move the loss clearly
    "batch": {"batch_size": 4, "grad_accum": 1},
    "schedule": {"max_steps": 8, "warmup_steps": 2},
    "model": {"dropout": 0.0},
    "eval": {"every_steps": 4, "save_every_steps": 4, "keep_last": 2},
    "runtime": {"log_every_steps": 1, "progress_bar": False},
}


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory):
    """(run_dir, RunResult) of an 8-step single-process run with dropout off."""
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("run") / "run"
    return run_dir, train(tiny_data, run_dir, TrainConfig.from_dict(RUN_CONFIG))


LAUNCH_SCRIPT = """
import json, logging, os, signal, sys
from tagtune.train import train
logging.basicConfig(level=logging.INFO)
from tagtune.train.config import TrainConfig
data, out, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
resume, kill_at = sys.argv[4] == "1", int(sys.argv[5])
def hook(step, **_):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(data, out, TrainConfig.from_dict(cfg), resume=resume, on_validate=hook)
"""


def write_launcher(folder: Path) -> Path:
    path = folder / "launch_train.py"
    path.write_text(LAUNCH_SCRIPT, encoding="utf-8")
    return path
