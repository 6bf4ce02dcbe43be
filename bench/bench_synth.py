"""Synthesis speed and quality on a full-size random-init IndexTTS v1.5, every figure against ``compat="official"``.

    python bench/bench_synth.py [--tokens 100] [--sentences 8] [--precisions int8,bf16] [--threads 2]
    python bench/bench_synth.py --quick        # the shipped tiny base, few codes: checks that it all runs

A random-init model never emits stop, so every sentence runs to ``--tokens`` codes: tokens/s and RTF are
honest for that length. The baseline is this project's own compat path (official decoding: fp32, one
sentence at a time, KV cache with official positions), measured in the same process right before.
Per stage (gpt / latents / vocoder) seconds are printed for every run; the GPT's time per decode step stands
next to its memory-bandwidth floor (the bytes of weights one step reads / this machine's copy bandwidth).
The vocoder's phase-form activations are timed against the official three steps in the same process.
The process keeps freed memory for reuse (``tagtune.allocator``), as every ``tagtune`` command does.
Quality: KL(fp32 || reduced), mel NLL and top-1 agreement of each reduced precision against fp32 on the codes
the compat path generated (``evaluate.quality``), teacher-forced in one pass and decoded step by step with each
model's own KV cache (the figure the last line gives: a bf16 cache shows only there); and, under greedy fp32
decoding with equal positions, fast == compat codes. Where the latent pass runs in bf16
(``TTS.latent_precision``), its audio is compared with fp32 latents' on the default case's codes
(``evaluate.quality.audio_difference``). The last line is the default settings (3-beam sampling, the "auto"
precisions of this device): end-to-end RTF with the quality of that decode precision.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tagtune.allocator import keep_freed_memory
from tagtune.audio import SAMPLE_RATE, MelSpectrogram
from tagtune.config import v1_5
from tagtune.evaluate.quality import (
    AudioDifference,
    Quality,
    audio_difference,
    decoded_quality_over,
    teacher_forced_quality_over,
)
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import batched_latents, vocode_joined
from tagtune.models.bigvgan import Activation1d, BigVGAN
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.precision import resolve_precision
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet
from tagtune.text import TextTokenizer

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "indextts-tiny"
SHIPPED_BASE = Path(__file__).resolve().parents[1] / "src" / "tagtune" / "assets" / "tiny-base"
COPY_BYTES = 256 * 2**20  # large enough to defeat the caches: a DRAM copy
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank, and then it runs home to sleep."
SENTENCE_TOKENS = 60  # packing limit that keeps each bench sentence (54 pieces) a GPT sentence of its own


def build_tts(fixture: Path, seed: int = 0) -> TTS:
    """Random-init full-size v1.5 GPT and BigVGAN; the fixture's tokenizer (its ids fit any vocabulary)."""
    torch.manual_seed(seed)
    cfg = v1_5()
    gpt = UnifiedVoice(cfg.gpt).eval()
    vocoder = BigVGAN(cfg.bigvgan).eval()
    vocoder.remove_weight_norm()
    tokenizer = TextTokenizer(fixture / "checkpoint" / "bpe.model", tagset=TagSet())
    return TTS(gpt, vocoder, tokenizer, MelSpectrogram(), precision="fp32", max_sentence_tokens=SENTENCE_TOKENS)


def decode_parser(doc: str) -> argparse.ArgumentParser:
    """The decode benchmarks' common flags: codes, beams, timed rounds, torch threads."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    return p


def int8_decode_tts(fixture: Path = FIXTURE):
    """``build_tts``'s model with the CPU default's int8 decode copy, and the fixture reference's conditioning:
    (tts, reference) for the decode benchmarks."""
    base = build_tts(fixture)
    tts = TTS(base.gpt, base.vocoder, base.tokenizer, None, precision="int8", references=base.references,
              max_sentence_tokens=SENTENCE_TOKENS)
    return tts, tts.reference(fixture / "inputs" / "ref.wav")


def build_quick_tts() -> TTS:
    """The shipped tiny base (trained), fp32: the same code paths at a size that runs in seconds."""
    return TTS.load(SHIPPED_BASE, precision="fp32", max_sentence_tokens=SENTENCE_TOKENS)


def copy_bandwidth(repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Best memory bandwidth (bytes/s, read + write) of a large tensor copy on ``device``."""
    src, dst = torch.ones(COPY_BYTES // 4, device=device), torch.empty(COPY_BYTES // 4, device=device)
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy touches fresh pages
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        dst.copy_(src)
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * COPY_BYTES / best


def decode_weight_bytes(gpt) -> int:
    """Bytes of weights one decode step reads: the backbone, final norm and mel head (int8 packed or float)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    total = 0
    for part in (gpt.gpt, gpt.final_norm, gpt.mel_head):
        for m in part.modules():
            if isinstance(m, DynamicInt8Linear):  # int8 weight, a scale and zero point per row, fp32 bias
                w, b = m.weight(), m.bias()
                total += w.numel() * w.element_size() + 8 * w.shape[0] + (b.numel() * 4 if b is not None else 0)
            else:
                total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


def run(tts: TTS, text: str, ref, cfg: GenerationConfig, compat: str | None):
    out = tts.synthesize(text, ref, generation=cfg, seed=1, compat=compat)
    t = out.timings
    return {"tok/s": out.tokens / t["gpt"], "steps/s": out.steps / t["gpt"], "rtf": out.rtf, "total": t["total"],
            "gpt": t["gpt"], "latents": t["latents"], "vocoder": t["vocoder"], "audio": out.seconds, "out": out}


def show(label: str, r: dict, base: dict | None = None) -> None:
    line = (f"{label:<38} {r['tok/s']:7.2f} tok/s  RTF {r['rtf']:5.2f}  total {r['total']:6.1f} s  "
            f"(gpt {r['gpt']:.1f} / latents {r['latents']:.1f} / vocoder {r['vocoder']:.1f} s, "
            f"audio {r['audio']:.1f} s)")
    if base is not None:
        line += f"  x{r['tok/s'] / base['tok/s']:.2f} tok/s, x{base['total'] / r['total']:.2f} end-to-end"
    print(line, flush=True)


def speed(tts: TTS, fast: dict[str, TTS], ref, tokens: int, sentences: int, paragraph_tokens: int) -> dict:
    """Every case against the compat path; returns the results of the default case (3 beams, 1 sentence)."""
    cases = [("1 sentence, 3-beam sampling", SENTENCE, tokens, 3),
             ("1 sentence, 1-beam sampling", SENTENCE, tokens, 1),
             (f"{sentences} sentences, 3-beam sampling", " ".join([SENTENCE] * sentences), paragraph_tokens, 3)]
    results = {}
    for title, text, n, beams in cases:
        cfg = GenerationConfig(num_beams=beams, max_new_tokens=n)
        print(f"\n== {title}, {n} codes per sentence", flush=True)
        base = run(tts, text, ref, cfg, "official")
        show("compat official (fp32, KV cache)", base)
        for name, candidate in fast.items():
            r = run(candidate, text, ref, cfg, None)
            show(f"fast {name}", r, base)
            results.setdefault(title, {})[name] = r
    return results[cases[0][0]]


def bandwidth_floor(fast: dict[str, TTS], default_case: dict) -> None:
    """Measured GPT time per decode step next to weight bytes / copy bandwidth."""
    bandwidth = copy_bandwidth()
    print(f"\n== GPT decode vs the memory-bandwidth floor (copy bandwidth {bandwidth / 1e9:.1f} GB/s)", flush=True)
    for name, candidate in fast.items():
        weights = decode_weight_bytes(candidate.fast_gpt)
        r = default_case[name]
        measured = 1000 * r["gpt"] / max(r["out"].steps, 1)
        floor = 1000 * weights / bandwidth
        print(f"{name:<6} {weights / 2**20:8.1f} MiB of weights per step: floor {floor:7.2f} ms/step, measured "
              f"{measured:7.2f} ms/step (3 beams; x{measured / floor:.1f} the floor)", flush=True)


def _use_official_activations(acts: list[Activation1d], official: bool) -> None:
    for m in acts:
        if official:
            m.forward = m.reference_forward  # an instance attribute shadows the class's phase form
        else:
            m.__dict__.pop("forward", None)


def vocoder_ratio(tts: TTS, ref, frames: int, repeats: int = 3) -> None:
    """The vocoder with phase-form activations against the official three steps, same weights, same input."""
    latents = torch.randn(1, frames, tts.gpt.cfg.model_dim, generator=torch.Generator().manual_seed(3))
    acts = [m for m in tts.vocoder.modules() if isinstance(m, Activation1d)]
    best, wavs = {False: float("inf"), True: float("inf")}, {}
    with torch.no_grad():
        for _ in range(repeats):  # alternate, so that load changes hit both alike
            for official in (False, True):
                _use_official_activations(acts, official)
                t = time.perf_counter()
                wavs[official] = tts.vocoder(latents, speaker=ref.speaker)
                best[official] = min(best[official], time.perf_counter() - t)
    _use_official_activations(acts, False)
    diff = (wavs[False] - wavs[True]).abs().max().item()
    seconds = frames * tts.vocoder.hop_length / SAMPLE_RATE
    print(f"\n== vocoder, {seconds:.1f} s of audio, best of {repeats}: official steps {best[True]:.2f} s, phase "
          f"form {best[False]:.2f} s: x{best[True] / best[False]:.2f} (max |diff| {diff:.1e})", flush=True)


def quality(tts: TTS, fast: dict[str, TTS], ref, tokens: int) -> dict[str, Quality]:
    print("\n== quality vs fp32 (teacher-forced on compat-generated codes)", flush=True)
    text_ids = torch.tensor(tts.sentences(SENTENCE)[:1])  # the first sentence: codes[0] are its codes
    prompts = []
    for seed in (2, 3):
        out = tts.synthesize(SENTENCE, ref, generation=GenerationConfig(max_new_tokens=tokens), seed=seed,
                             compat="official")
        prompts.append((tts.reference(ref).conds, text_ids, out.codes[0][None]))
    results = {}
    for name, candidate in fast.items():
        forced = teacher_forced_quality_over(tts.gpt, candidate.fast_gpt, prompts)
        print(f"{name:<6} {forced.summary()}", flush=True)
        results[name] = decoded_quality_over(tts.gpt, candidate.fast_gpt, prompts)  # what sampling sees
        print(f"{name:<6} {results[name].summary()} (decoded: each model's KV cache in the loop)", flush=True)
    greedy = GenerationConfig.greedy(max_new_tokens=min(tokens, 30))
    same = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, position_mode="official", references=tts.references,
               max_sentence_tokens=SENTENCE_TOKENS)  # the same sentences as the compat run
    a = tts.synthesize(SENTENCE, ref, generation=greedy, compat="official").codes
    b = same.synthesize(SENTENCE, ref, generation=greedy).codes
    print(f"greedy fp32, official positions: fast codes == compat codes: {all(map(torch.equal, a, b))}")
    return results


def latent_quality(tts: TTS, candidate: TTS, ref, out) -> AudioDifference | None:
    """The candidate's latent pass against fp32 latents on the same codes, both vocoded: None when it is fp32."""
    if candidate.latent_precision == "fp32":
        return None
    sentences, codes = candidate.sentences(SENTENCE), list(out.codes)
    waves = {}
    for name, gpt in (("fp32", tts.gpt), ("candidate", candidate.latent_gpt)):
        latents = batched_latents(gpt, ref.conds, sentences, codes, candidate.batch_size)
        waves[name] = torch.cat(vocode_joined(tts.vocoder, latents, ref.speaker))
    diff = audio_difference(waves["fp32"], waves["candidate"])
    print(f"\n== latent pass in {candidate.latent_precision} vs fp32 on the default case's codes: {diff.summary()}",
          flush=True)
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=100, help="codes per sentence (random init never stops)")
    p.add_argument("--sentences", type=int, default=8)
    p.add_argument("--paragraph-tokens", type=int, default=40, help="codes per sentence in the paragraph case")
    p.add_argument("--precisions", default="int8,bf16", help="reduced precisions checked for quality")
    p.add_argument("--speed-precisions", default="int8", help="the subset also timed (the default always is)")
    p.add_argument("--threads", type=int, default=2, help="1 is steadier on a CPU shared with other jobs")
    p.add_argument("--fixture", type=Path, default=FIXTURE)
    p.add_argument("--quick", action="store_true", help="the shipped tiny base and few codes (seconds, not minutes)")
    a = p.parse_args(argv)
    if a.quick:
        a.tokens, a.sentences, a.paragraph_tokens = min(a.tokens, 20), min(a.sentences, 2), min(a.paragraph_tokens, 10)
    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as the command line does: both sides run with it
    t0 = time.perf_counter()
    tts = build_quick_tts() if a.quick else build_tts(a.fixture)
    ref = tts.reference(a.fixture / "inputs" / "ref.wav")
    default = resolve_precision("auto", tts.device)
    names = dict.fromkeys([default, *a.precisions.split(",")])  # ordered, no repeats
    fast = {}
    for name in names:
        fast[name] = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, precision=name, references=tts.references,
                         max_sentence_tokens=SENTENCE_TOKENS)
        fast[name].fast_gpt  # noqa: B018 - build the reduced copies outside the timings
        fast[name].latent_gpt  # noqa: B018
    print(f"built {'the shipped tiny base' if a.quick else 'full-size v1.5 (random init)'} in "
          f"{time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {a.threads} threads; "
          f"default precision here: {default}", flush=True)
    timed = {k: v for k, v in fast.items() if k in (default, *a.speed_precisions.split(","))}
    default_case = speed(tts, timed, ref, a.tokens, a.sentences, a.paragraph_tokens)
    bandwidth_floor(timed, default_case)
    vocoder_ratio(tts, ref, frames=a.tokens)
    results = quality(tts, fast, ref, a.tokens)
    latent_quality(tts, fast[default], ref, default_case[default]["out"])
    q = results[default]
    print(f"default end-to-end RTF: {default_case[default]['rtf']:.2f} (KL {q.kl:.4f} nats/code, "
          f"NLL {100 * q.nll_change:+.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
