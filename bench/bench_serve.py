"""Serving: time to first audio, throughput of concurrent requests, memory of several adapters on one base.

    python bench/bench_serve.py [--models tiny,full] [--seconds 10] [--requests 8] [--threads 2] [--repeats 2]
                                [--quick]

Every figure is a ratio against a baseline measured in the same process, right beside it:

* first audio: ``TTS.stream`` time to its first chunk over ``TTS.synthesize``'s time for the whole sentence
  (same text, settings and seed; goal <= 0.25 for a 10 s sentence);
* throughput: audio seconds per wall second of N requests submitted together to the scheduler (decode steps
  batched) over the same N requests submitted one after another to the same scheduler (goal >= 2x);
* memory: process RSS growth and parameter bytes with 4 adapters over 1 adapter on the shared base, beside
  what 4 merged copies of the GPT would hold.

Models: ``tiny`` is the shipped tiny base; ``full`` a random-init full-size IndexTTS v1.5 GPT and BigVGAN (a
random model never emits stop, so every sentence runs to the requested length: ``--seconds`` of audio is
``seconds * 24000 / 1024`` codes). Sampling is the official default (3-beam multinomial). ``--quick`` shortens
everything to check that the script runs.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
from peft import LoraConfig

from tagtune.audio import SAMPLE_RATE, MelSpectrogram
from tagtune.config import v1_5
from tagtune.folders import shipped_base
from tagtune.generation import GenerationConfig
from tagtune.lora import DEFAULT_TARGETS
from tagtune.models.bigvgan import BigVGAN
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.serve.models import SharedBase
from tagtune.serve.scheduler import Scheduler, SpeechJob
from tagtune.synthesis.tts import TTS, text_to_sentences
from tagtune.tags import TagSet
from tagtune.text import TextTokenizer

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank, and then it runs home to sleep."
WORDS = SENTENCE.split()
CODE_SECONDS = 1024 / SAMPLE_RATE  # audio per mel code
LORA_RANK = 16


def build(name: str) -> TTS:
    """The tiny shipped base, or a random-init full-size v1.5 (with the tiny base's tokenizer: its ids fit)."""
    if name == "tiny":
        return TTS.load(shipped_base(), precision="fp32")
    torch.manual_seed(0)
    cfg = v1_5()
    gpt = UnifiedVoice(cfg.gpt).eval()
    vocoder = BigVGAN(cfg.bigvgan).eval()
    vocoder.remove_weight_norm()
    tokenizer = TextTokenizer(shipped_base() / "bpe.model", tagset=TagSet())
    return TTS(gpt, vocoder, tokenizer, MelSpectrogram(), precision="fp32")


def reference() -> tuple[int, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    return SAMPLE_RATE, (0.2 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def first_audio(tts: TTS, ref, codes: int, repeats: int) -> None:
    """Best of ``repeats`` alternating runs of each (the first call of a process pays one-time costs)."""
    cfg = GenerationConfig(max_new_tokens=codes)
    tts.synthesize(SENTENCE, ref, generation=GenerationConfig(max_new_tokens=4), seed=0)  # warm-up
    t_whole = t_first = t_stream = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        whole = tts.synthesize(SENTENCE, ref, generation=cfg, seed=1)
        t_whole = min(t_whole, time.perf_counter() - t0)
        t0, first, chunks = time.perf_counter(), None, []
        for chunk in tts.stream(SENTENCE, ref, generation=cfg, seed=1):
            first = time.perf_counter() - t0 if first is None else first
            chunks.append(chunk)
        t_first, t_stream = min(t_first, first), min(t_stream, time.perf_counter() - t0)
    joined = np.concatenate(chunks)
    diff = int(np.abs(joined.astype(int) - whole.audio.astype(int)).max()) if joined.shape == whole.audio.shape else -1
    print(f"  first audio (best of {repeats}): {whole.seconds:.1f} s sentence; synthesize {t_whole:.2f} s; stream "
          f"first chunk {t_first:.2f} s, all {t_stream:.2f} s ({len(chunks)} chunks, max diff {diff} LSB)")
    print(f"  -> time to first audio / time to whole sentence = {t_first / t_whole:.3f} (goal <= 0.25)", flush=True)


def _run_jobs(scheduler: Scheduler, voice, texts: list[str], codes: int, together: bool) -> tuple[float, float]:
    """Audio seconds and wall seconds for ``texts`` as requests, all submitted at once or one after another."""
    tokenizer = scheduler.shared.lanes["base"].tokenizer
    samples: list[int] = []
    errors: list[tuple[int, str]] = []

    def submit(i: int, text: str) -> threading.Event:
        finished = threading.Event()

        def on_done(error):
            errors.extend([error] if error else [])
            finished.set()
        scheduler.submit(SpeechJob("base", text_to_sentences(tokenizer, text), voice,
                                   GenerationConfig(max_new_tokens=codes, position_mode="train"),
                                   torch.Generator().manual_seed(i), on_chunk=lambda c: samples.append(len(c)),
                                   on_done=on_done))
        return finished

    t0 = time.perf_counter()
    if together:
        for finished in [submit(i, text) for i, text in enumerate(texts)]:
            finished.wait()
    else:
        for i, text in enumerate(texts):
            submit(i, text).wait()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"requests failed: {errors}")
    return sum(samples) / SAMPLE_RATE, wall


def throughput(tts: TTS, voice, requests: int, codes: int) -> None:
    shared = SharedBase(tts.gpt, tts.vocoder, MelSpectrogram(), tts.tokenizer)
    scheduler = Scheduler(shared, max_active=requests, max_queue=requests)
    scheduler.start()
    texts = [" ".join(WORDS[i % len(WORDS):] + WORDS[: i % len(WORDS)]) for i in range(requests)]
    try:
        _run_jobs(scheduler, voice, texts[:1], 4, together=False)  # warm-up (and the voice's conditioning)
        audio_seq, wall_seq = _run_jobs(scheduler, voice, texts, codes, together=False)
        audio_par, wall_par = _run_jobs(scheduler, voice, texts, codes, together=True)
    finally:
        scheduler.stop(0)
    print(f"  throughput: {requests} requests x {codes} codes; one after another {audio_seq:.1f} s audio in "
          f"{wall_seq:.1f} s ({audio_seq / wall_seq:.3f} audio s/s); together {audio_par:.1f} s in {wall_par:.1f} s "
          f"({audio_par / wall_par:.3f} audio s/s, widest step {scheduler.widest} rows)")
    print(f"  -> concurrent / sequential throughput = {(audio_par / wall_par) / (audio_seq / wall_seq):.2f}x "
          "(goal >= 2x)", flush=True)


def _lora_state(gpt, rank: int) -> dict[str, torch.Tensor]:
    """Random LoRA matrices for every target layer of every block, keyed as peft saves them."""
    state = {}
    for i, block in enumerate(gpt.gpt.h):
        for target in DEFAULT_TARGETS:
            layer = block.get_submodule(target)
            fan_in, fan_out = getattr(layer, "base_layer", layer).weight.shape  # Conv1D stores (in, out)
            state[f"gpt.h.{i}.{target}.lora_A.weight"] = torch.randn(rank, fan_in) * 0.01
            state[f"gpt.h.{i}.{target}.lora_B.weight"] = torch.randn(fan_out, rank) * 0.01
    return state


def _rss_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024


def memory(tts: TTS, adapters: int = 4) -> None:
    """RSS and parameter bytes of the shared base with 1 and with ``adapters`` LoRA adapters."""
    shared = SharedBase(tts.gpt, tts.vocoder, MelSpectrogram(), tts.tokenizer)
    gpt_bytes = sum(p.numel() * p.element_size() for p in tts.gpt.parameters())
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=list(DEFAULT_TARGETS),
                        fan_in_fan_out=True)
    rss, lora_bytes = [_rss_mb()], []
    for i in range(adapters):
        before = {id(p) for p in tts.gpt.parameters()}
        shared.add_lora(f"adapter{i}", config, _lora_state(tts.gpt, LORA_RANK), tts.tokenizer)
        lora_bytes.append(sum(p.numel() * p.element_size() for p in tts.gpt.parameters() if id(p) not in before))
        rss.append(_rss_mb())
    one, many = gpt_bytes + lora_bytes[0], gpt_bytes + sum(lora_bytes)
    print(f"  memory: GPT {gpt_bytes / 2**20:.1f} MiB, one rank-{LORA_RANK} adapter {lora_bytes[0] / 2**20:.2f} MiB; "
          f"RSS growth {rss[1] - rss[0]:.1f} MiB with the first adapter, {rss[-1] - rss[0]:.1f} MiB with {adapters}")
    print(f"  -> GPT weights with {adapters} adapters / with 1 = {many / one:.3f} ({adapters} merged copies: "
          f"{adapters * gpt_bytes / one:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,full")
    p.add_argument("--seconds", type=float, default=10.0, help="audio per request (codes = seconds / 0.0427)")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs of the first-audio measurement (best is kept)")
    p.add_argument("--quick", action="store_true", help="short runs (tiny model only), to check the script")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = ["tiny"] if a.quick else a.models.split(",")
    codes = 24 if a.quick else round(a.seconds / CODE_SECONDS)
    requests = 3 if a.quick else a.requests
    for name in models:
        print(f"== {name} model, {a.threads} threads, 3-beam sampling", flush=True)
        tts = build(name)
        ref = reference()
        first_audio(tts, ref, max(codes, 60) if a.quick else codes, a.repeats)
        throughput(tts, ref, requests, codes)
        memory(tts)


if __name__ == "__main__":
    main()
