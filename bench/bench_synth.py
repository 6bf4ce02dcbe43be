"""Synthesis speed and quality on a full-size random-init IndexTTS v1.5, every figure against ``compat="official"``.

    python bench/bench_synth.py [--tokens 100] [--sentences 8] [--precisions int8,bf16] [--threads 2]

A random-init model never emits stop, so every sentence runs to ``--tokens`` codes: tokens/s and RTF are
honest for that length. The baseline is this project's own compat path (official decoding: fp32, one
sentence at a time, KV cache with official positions), measured in the same process right before.
Quality: teacher-forced top-1 code agreement and mel NLL of each reduced precision against fp32, on the
codes the compat path generated; and, under greedy fp32 decoding with equal positions, fast == compat codes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tagtune.audio import MelSpectrogram
from tagtune.config import v1_5
from tagtune.evaluate.quality import teacher_forced_quality
from tagtune.generation import GenerationConfig
from tagtune.models.bigvgan import BigVGAN
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet
from tagtune.text import TextTokenizer

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "indextts-tiny"
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


def speed(tts: TTS, fast: dict[str, TTS], ref, tokens: int, sentences: int, paragraph_tokens: int) -> None:
    cases = [("1 sentence, 3-beam sampling", SENTENCE, tokens, 3),
             ("1 sentence, 1-beam sampling", SENTENCE, tokens, 1),
             (f"{sentences} sentences, 3-beam sampling", " ".join([SENTENCE] * sentences), paragraph_tokens, 3)]
    for title, text, n, beams in cases:
        cfg = GenerationConfig(num_beams=beams, max_new_tokens=n)
        print(f"\n== {title}, {n} codes per sentence", flush=True)
        base = run(tts, text, ref, cfg, "official")
        show("compat official (fp32, KV cache)", base)
        for name, candidate in fast.items():
            show(f"fast {name}", run(candidate, text, ref, cfg, None), base)


def quality(tts: TTS, fast: dict[str, TTS], ref, tokens: int) -> None:
    print("\n== quality vs fp32 (teacher-forced on compat-generated codes)", flush=True)
    text_ids = torch.tensor(tts.sentences(SENTENCE))
    out = tts.synthesize(SENTENCE, ref, generation=GenerationConfig(max_new_tokens=tokens), seed=2,
                         compat="official")
    codes = out.codes[0][None]
    for name, candidate in fast.items():
        q = teacher_forced_quality(tts.gpt, candidate.fast_gpt, tts.reference(ref).conds, text_ids, codes)
        change = q["nll_candidate"] / q["nll_reference"] - 1
        print(f"{name:<6} top-1 agreement {q['top1_agreement']:.4f}  NLL fp32 {q['nll_reference']:.4f} "
              f"-> {q['nll_candidate']:.4f} ({change:+.2%})", flush=True)
    greedy = GenerationConfig.greedy(max_new_tokens=min(tokens, 30))
    same = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, position_mode="official", references=tts.references)
    a = tts.synthesize(SENTENCE, ref, generation=greedy, compat="official").codes
    b = same.synthesize(SENTENCE, ref, generation=greedy).codes
    print(f"greedy fp32, official positions: fast codes == compat codes: {all(map(torch.equal, a, b))}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=100, help="codes per sentence (random init never stops)")
    p.add_argument("--sentences", type=int, default=8)
    p.add_argument("--paragraph-tokens", type=int, default=40, help="codes per sentence in the paragraph case")
    p.add_argument("--precisions", default="int8,bf16", help="reduced precisions checked for quality")
    p.add_argument("--speed-precisions", default="int8", help="the subset also timed")
    p.add_argument("--threads", type=int, default=2, help="1 is steadier on a CPU shared with other jobs")
    p.add_argument("--fixture", type=Path, default=FIXTURE)
    p.add_argument("--skip-speed", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    tts = build_tts(a.fixture)
    ref = tts.reference(a.fixture / "inputs" / "ref.wav")
    fast = {}
    for name in a.precisions.split(","):
        fast[name] = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, precision=name, references=tts.references,
                         max_sentence_tokens=SENTENCE_TOKENS)
        fast[name].fast_gpt  # noqa: B018 - build the reduced copy outside the timings
    print(f"built full-size v1.5 (random init) in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, "
          f"{a.threads} threads", flush=True)
    if not a.skip_speed:
        timed = {k: v for k, v in fast.items() if k in a.speed_precisions.split(",")}
        speed(tts, timed, ref, a.tokens, a.sentences, a.paragraph_tokens)
    quality(tts, fast, ref, a.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
