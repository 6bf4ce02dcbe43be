"""Judge throughput on CPU: audio seconds judged per wall-clock second, for each judge.

The judges are tiny random-init models of the real classes (AST audio tagger, Whisper, WavLM x-vector; built as
the tests build them), so the numbers measure tagtune's side of judging (resampling, sliding windows, feature
extraction, batching, scoring) more than a real judge's network. Each judge runs at batch 1 (the baseline) and
at batch 8 in this process, side by side, and the ratio is printed.

    python bench/bench_judges.py [--clips 16] [--seconds 3.0] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BATCHES = (1, 8)


def _timed(run, repeats: int = 2) -> float:
    """Best wall time of ``repeats`` runs after one warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _runner(kind: str, folder: Path, clips: list, batch: int):
    """A call that judges ``clips`` once with the ``kind`` judge loaded from ``folder`` at ``batch``."""
    from tagtune.evaluate.judges.events import AudioSetEventJudge, load_event_map
    from tagtune.evaluate.judges.voice import XVectorVoiceJudge
    from tagtune.evaluate.judges.words import AsrWordsJudge

    if kind == "events":
        judge = AudioSetEventJudge.load(str(folder), ["<laughs>", "<sighs>"], load_event_map(), batch_size=batch)
        return lambda: judge.events(clips)
    if kind == "words":
        asr = AsrWordsJudge.load(str(folder), batch_size=batch)
        return lambda: asr.transcribe(clips, "en")
    voice = XVectorVoiceJudge.load(str(folder), batch_size=batch)
    return lambda: voice.similarity(clips, clips)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from tagtune.evaluate.judges.base import Speech
    from test_judges import _tiny_ast, _tiny_whisper, _tiny_xvector

    rng = np.random.default_rng(0)
    clips = [Speech((0.1 * rng.standard_normal(int(a.seconds * 24000))).astype(np.float32)) for _ in range(a.clips)]
    audio_s = a.clips * a.seconds
    kinds = {"events": ("AST, 1 s windows every 0.25 s", _tiny_ast), "words": ("Whisper pipeline", _tiny_whisper),
             "voice": ("WavLM x-vector", _tiny_xvector)}
    print(f"{a.clips} clips x {a.seconds:g} s of audio, {a.threads} threads; audio seconds judged per second")
    print(f"{'judge':40s} {'batch 1':>10s} {'batch 8':>10s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        for kind, (what, build) in kinds.items():
            build(Path(tmp) / kind)
            rates = [audio_s / _timed(_runner(kind, Path(tmp) / kind, clips, b)) for b in BATCHES]
            print(f"{kind + ' (' + what + ')':40s} {rates[0]:10.1f} {rates[1]:10.1f} {rates[1] / rates[0]:6.2f}x")


if __name__ == "__main__":
    main()
