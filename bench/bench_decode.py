"""The default int8 decode against its own earlier forms, in one run: what each step change of the decode buys.

    python bench/bench_decode.py [--tokens 100] [--beams 3] [--rounds 3] [--threads 2]

Full-size random-init v1.5 (as ``bench_synth.py`` builds it), the bench sentence, 3-beam sampling. Forms:

* ``sdpa, full reorder``: each decode step's attention through SDPA, and beam search moving the whole filled
  KV cache of every row that changes beam;
* ``one-query, full reorder``: the one-query attention of ``models/gpt2.py`` (two matrix products);
* ``default``: and the reorder moving only the positions after the prompt (``MelDecoder.reorder``).

Alternating rounds after one warm-up round; best round of each. Sampling draws the same seed in every form;
their codes may part where rounding flips a draw, so the figure compared is time per decode step.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import tagtune.models.gpt2 as gpt2
from bench_synth import SENTENCE, decode_parser, int8_decode_tts
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import generate_sentences

ONE_QUERY, REORDER = gpt2._one_query_attention, gpt2.KVCache.reorder


def sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def full_reorder(cache, index, start=0):
    REORDER(cache, index, 0)


FORMS = {"sdpa, full reorder": (sdpa, full_reorder), "one-query, full reorder": (ONE_QUERY, full_reorder),
         "default": (ONE_QUERY, REORDER)}


def main(argv: list[str] | None = None) -> int:
    p = decode_parser(__doc__)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tts, ref = int8_decode_tts()
    sentences, cfg = tts.sentences(SENTENCE), GenerationConfig(num_beams=a.beams, max_new_tokens=a.tokens)
    best = dict.fromkeys(FORMS, float("inf"))
    try:
        for r in range(a.rounds + 1):  # round 0 warms every form up
            for name, (attention, reorder) in FORMS.items():
                gpt2._one_query_attention, gpt2.KVCache.reorder = attention, reorder
                t = time.perf_counter()
                _, steps = generate_sentences(tts.fast_gpt, sentences, cfg, ref.conds, torch.Generator().manual_seed(1))
                seconds = time.perf_counter() - t
                print(f"round {r} {name:<24} {seconds:.2f} s, {1000 * seconds / steps:.1f} ms/step", flush=True)
                if r:
                    best[name] = min(best[name], seconds)
    finally:
        gpt2._one_query_attention, gpt2.KVCache.reorder = ONE_QUERY, REORDER
    first = next(iter(best.values()))
    print(f"decode of {a.tokens} codes, {a.beams} beams, int8, best of {a.rounds}: "
          + "; ".join(f"{name} {s:.2f} s (x{first / s:.2f})" for name, s in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
