"""What tag guidance costs in a decode: the same sentence decoded plainly, with tag guidance, and with tag guidance
anchored to a base model, in one run.

    python bench/bench_guidance.py [--tokens 100] [--beams 3] [--rounds 3] [--threads 2] [--scale 3]

Full-size random-init v1.5 (as ``bench_synth.py`` builds it), the int8 decode copy the CPU default uses, the
bench sentence and its "tag-free twin" (the sentence with one piece left out: random weights have no tag rows,
and the cost does not depend on which piece differs). Guidance decodes both texts as one batch, twice the rows
(``generation/guidance.py``); a small-row decode step is bound by reading the weights, which the two halves
share, so the step costs less than twice. Anchored, the base model (a second int8 copy of the same weights,
which a real base of the same size costs as much as) also decodes the tag-free rows every step, reading its own
weights. Alternating rounds after one warm-up round; best round of each; the figure compared is time per decode
step (the decodes may stop at different steps).
"""

from __future__ import annotations

import sys
import time

import torch

from bench_synth import SENTENCE, decode_parser, int8_decode_tts
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import generate_sentences
from tagtune.generation.guidance import Anchor
from tagtune.synthesis.fast_gpt import prepare_gpt


def main(argv: list[str] | None = None) -> int:
    p = decode_parser(__doc__)
    p.add_argument("--scale", type=float, default=3.0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tts, ref = int8_decode_tts()
    sentences = tts.sentences(SENTENCE)
    free = [s[:2] + s[3:] for s in sentences]  # one piece fewer stands in for a removed tag
    guided = GenerationConfig(num_beams=a.beams, max_new_tokens=a.tokens, tag_guidance=a.scale)
    anchor = Anchor(prepare_gpt(tts.gpt, "int8"), ref.conds)
    forms = {"plain": (GenerationConfig(num_beams=a.beams, max_new_tokens=a.tokens), None, None),
             f"tag guidance {a.scale:g}": (guided, free, None), "anchored": (guided, free, anchor)}
    best = dict.fromkeys(forms, float("inf"))
    for r in range(a.rounds + 1):  # round 0 warms every form up
        for name, (cfg, twins, base) in forms.items():
            t = time.perf_counter()
            _, steps = generate_sentences(tts.fast_gpt, sentences, cfg, ref.conds, torch.Generator().manual_seed(1),
                                          twins, base)
            per_step = (time.perf_counter() - t) / steps
            print(f"round {r} {name:<18} {steps} steps, {1000 * per_step:.1f} ms/step", flush=True)
            if r:
                best[name] = min(best[name], per_step)
    plain, twin, anchored = best.values()
    print(f"decode step, {a.beams} beams, int8, best of {a.rounds}: plain {1000 * plain:.1f} ms, tag guidance "
          f"{1000 * twin:.1f} ms (x{twin / plain:.2f} the plain step), anchored to a base {1000 * anchored:.1f} ms "
          f"(x{anchored / plain:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
