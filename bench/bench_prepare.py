"""Data preparation throughput: hours of audio prepared per minute through a full-size DVAE.

Builds a model folder with a full-size random-init IndexTTS DVAE (the official vqvae config) and a
tokenizer, generates a synthetic tagged corpus of about ``--hours`` of speech, and runs ``tagtune prepare``
on it (the real command path: decoding workers, batched DVAE). The baseline, measured in the same run on a
slice of the same clips, is the usual notebook loop: one clip at a time, decode -> resample -> mel -> DVAE.

    python bench/bench_prepare.py [--hours 0.5] [--workers 1] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tagtune.audio import MelSpectrogram, load_audio, resample_soxr, to_mono
from tagtune.checkpoint import save_pth, write_config
from tagtune.config import v1_5
from tagtune.data.for_model import prepare_for_model
from tagtune.models.dvae import DiscreteVAE
from tagtune.synthetic import generate_corpus

ASSETS = Path(__file__).resolve().parents[1] / "src" / "tagtune" / "assets" / "tiny-base"


def make_model_folder(folder: Path, bpe: Path) -> DiscreteVAE:
    cfg = v1_5()
    torch.manual_seed(0)
    dvae = DiscreteVAE(cfg.vqvae).eval()
    save_pth(folder / cfg.dvae_checkpoint, dvae.state_dict())
    shutil.copy(bpe, folder / cfg.dataset.bpe_model)
    write_config(folder, cfg)
    return dvae


def baseline(dvae: DiscreteVAE, clips: list[Path]) -> float:
    """Seconds of audio per second of wall time, one clip at a time."""
    mel = MelSpectrogram()
    audio_s, t0 = 0.0, time.perf_counter()
    with torch.no_grad():
        for path in clips:
            wav, sr = load_audio(path)
            wav = resample_soxr(to_mono(wav), sr, 24000)
            dvae.get_codebook_indices(mel(wav))
            audio_s += wav.shape[-1] / 24000
    return audio_s / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hours", type=float, default=0.5, help="hours of synthetic speech to prepare")
    ap.add_argument("--workers", type=int, default=1, help="decoding worker processes")
    ap.add_argument("--baseline-clips", type=int, default=40)
    ap.add_argument("--bpe", type=Path, default=ASSETS / "bpe.model")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    a = ap.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="tagtune-bench-prepare-"))
    model, corpus, data = root / "model", root / "corpus", root / "data"
    model.mkdir(parents=True, exist_ok=True)
    dvae = make_model_folder(model, a.bpe)
    n_clips = max(8, int(a.hours * 3600 / 4.5))  # ~4.5 s per synthetic clip
    t0 = time.perf_counter()
    info = generate_corpus(corpus, n_clips=n_clips, seed=0)
    print(f"corpus: {info.n_clips} clips in {time.perf_counter() - t0:.1f} s")
    clips = sorted((corpus / "wavs").glob("*.wav"))

    base_rate = baseline(dvae, clips[: a.baseline_clips])
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = prepare_for_model(model, str(corpus), data, workers=a.workers, progress=False)
    wall = time.perf_counter() - t0
    hours = manifest["hours"]["total"]
    rate = hours * 3600 / wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clips": manifest["counts"], "hours": round(hours, 3), "wall_s": round(wall, 1)}))
    print(f"machine: {torch.get_num_threads()} torch threads; full-size DVAE (hidden 512, 8192 codes), fp32")
    print(f"baseline (one clip at a time): {base_rate * 60 / 3600:.2f} h of audio per minute")
    print(f"tagtune prepare:               {rate * 60 / 3600:.2f} h of audio per minute "
          f"(x{rate / base_rate:.2f}); peak RSS {peak:.0f} MB")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
