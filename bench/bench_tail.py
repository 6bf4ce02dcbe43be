"""The stages after decoding in reduced precision: the latent pass and BigVGAN, each against fp32 in one run.

    python bench/bench_tail.py [--model full|tiny] [--codes 100] [--threads 2]

``full``: random-init full-size v1.5 (as ``bench_synth.py`` builds it); ``tiny``: the shipped trained tiny base.
Codes come from one default 3-beam int8 synthesis of the bench sentence. Each candidate is timed (best of 3)
against the fp32 stage in the same process, and its audio compared with the all-fp32 audio: SNR and the mean
absolute difference of the natural-log mel (``audio.MelSpectrogram``), overall and over the bins within
8 nats of the loudest. The last line is the noise floor of the comparison: fp32 again with one thread.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from bench_synth import FIXTURE, SENTENCE, build_quick_tts, build_tts
from tagtune.audio import SAMPLE_RATE, MelSpectrogram
from tagtune.evaluate.quality import audio_difference
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import batched_latents
from tagtune.synthesis.fast_gpt import latent_model


def best_of(fn, repeats: int = 3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


class Comparison:
    """Audio against the all-fp32 audio."""

    def __init__(self, reference: torch.Tensor):
        self.mel, self.reference = MelSpectrogram(), reference

    def line(self, label: str, wav: torch.Tensor) -> str:
        return f"{label:<30} {audio_difference(self.reference, wav, self.mel).summary()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("full", "tiny"), default="full")
    p.add_argument("--codes", type=int, default=100, help="codes per sentence (random init never stops)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tts = build_tts(FIXTURE) if a.model == "full" else build_quick_tts()
    tts.precision, tts.latent_precision = "int8", "fp32"
    ref = tts.reference(FIXTURE / "inputs" / "ref.wav")
    out = tts.synthesize(SENTENCE, ref, generation=GenerationConfig(num_beams=3, max_new_tokens=a.codes), seed=1)
    sentences, codes = tts.sentences(SENTENCE), list(out.codes)
    print(f"{a.model}: {sum(map(len, codes))} codes in {len(codes)} sentences, {a.threads} threads", flush=True)

    gpts = {"fp32": tts.gpt, "int8 (the decode copy)": tts.fast_gpt,
            "bf16 (a backbone copy)": latent_model(tts.gpt)}

    def latent_pass(gpt) -> torch.Tensor:
        return torch.cat(batched_latents(gpt, ref.conds, sentences, codes, 8))

    latents, seconds = {}, {}
    for name, gpt in gpts.items():
        latents[name], seconds[name] = best_of(lambda gpt=gpt: latent_pass(gpt))

    def autocast_pass() -> torch.Tensor:  # one context per call, as a synthesis would open: the casts are redone
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return latent_pass(tts.gpt)

    _, autocast_s = best_of(autocast_pass)
    print(f"latent pass fp32 {seconds['fp32']:.3f} s; " + "; ".join(
        f"{k} {v:.3f} s (x{seconds['fp32'] / v:.2f})" for k, v in seconds.items() if k != "fp32")
        + f"; autocast bf16 {autocast_s:.3f} s (x{seconds['fp32'] / autocast_s:.2f})", flush=True)

    bf16_vocoder = copy.deepcopy(tts.vocoder).to(torch.bfloat16)

    def vocode(vocoder, lat: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        with torch.inference_mode():
            return vocoder(lat[None].to(dtype), speaker=ref.speaker.to(dtype))[0, 0].float()

    def autocast_vocode(lat: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return vocode(tts.vocoder, lat)

    reference, fp32_s = best_of(lambda: vocode(tts.vocoder, latents["fp32"]))
    _, bf16_s = best_of(lambda: vocode(bf16_vocoder, latents["fp32"], torch.bfloat16))
    _, autocast_vocoder_s = best_of(lambda: autocast_vocode(latents["fp32"]))
    print(f"vocoder fp32 {fp32_s:.3f} s, bf16 {bf16_s:.3f} s (x{fp32_s / bf16_s:.2f}), autocast bf16 "
          f"{autocast_vocoder_s:.3f} s (x{fp32_s / autocast_vocoder_s:.2f}) for {len(reference) / SAMPLE_RATE:.2f} s "
          "of audio", flush=True)
    compare = Comparison(reference)
    for name in list(gpts)[1:]:
        print(compare.line(f"latents {name.split()[0]}", vocode(tts.vocoder, latents[name])))
    print(compare.line("latents autocast bf16", vocode(tts.vocoder, autocast_pass())))
    print(compare.line("vocoder bf16", vocode(bf16_vocoder, latents["fp32"], torch.bfloat16)))
    print(compare.line("vocoder autocast bf16", autocast_vocode(latents["fp32"])))
    torch.set_num_threads(1)
    print(compare.line("fp32, 1 thread (noise floor)", vocode(tts.vocoder, latents["fp32"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
