"""Free-running evaluation: how the prompts are batched, three ways, in one run.

    python bench/bench_freerun.py            # the shipped tiny base, 120 prompts (one transfer condition's worth)

* ``16 in prompt order``: batches of 16 consecutive prompts (how the evaluation batched before);
* ``16 like-length``: batches of 16 prompts of like reference length;
* ``<n> like-length``: ``batch_rows`` of the model (64 on the tiny base), like-length: what ``tagtune eval`` does.

All decode the same prompts with ``evaluate.freerun.generate`` (sampled with the evaluation's settings, each batch
up to 1.5x its longest reference): reference lengths of 2-10 s, texts and reference mels drawn at random, so the
base stops where it stops. Seconds per prompt decoded, median over rounds in rotating order. The last line:
``<n> like-length vs 16 in prompt order: x<r> per prompt``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch


def make_items(gpt, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    vocab = gpt.cfg.number_text_tokens
    items = []
    for _ in range(n):
        seconds = rng.uniform(2.0, 10.0)
        n_codes = int(seconds * 24000 / 1024)
        text = torch.tensor([rng.randrange(2, vocab - 1) for _ in range(max(4, int(seconds * 6)))])
        items.append({"codes": torch.zeros(n_codes, dtype=torch.long), "text_ids": text,
                      "cond_mel": torch.randn(100, rng.randint(200, 560)) - 4.0})
    return items


def main() -> None:
    from tagtune.checkpoint import load_gpt
    from tagtune.evaluate.freerun import FreeRunSettings, Prompt, batch_rows, generate
    from tagtune.folders import shipped_base

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    gpt = load_gpt(shipped_base()).eval()
    model = SimpleNamespace(gpt=gpt, stop_text=gpt.cfg.stop_text_token)
    items = make_items(gpt, a.prompts, seed=0)
    prompts = [Prompt(k, it["text_ids"], False) for k, it in enumerate(items)]
    rows = batch_rows(gpt)

    def in_order(r: int):  # one call per 16 consecutive prompts (and their items only): the old batches
        return [c for s in range(0, len(prompts), 16)
                for c in generate(model, [Prompt(k, it["text_ids"], False) for k, it in enumerate(items[s : s + 16])],
                                  items[s : s + 16], FreeRunSettings(batch_size=16), seed=r + s)]

    variants = {"16 in prompt order": in_order,
                "16 like-length": lambda r: generate(model, prompts, items, FreeRunSettings(batch_size=16), seed=r),
                f"{rows} like-length": lambda r: generate(model, prompts, items, FreeRunSettings(batch_size=rows),
                                                          seed=r)}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(a.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            started = time.perf_counter()
            codes = variants[name](r)
            seconds = time.perf_counter() - started
            times[name].append(seconds / len(prompts))
            print(f"round {r} {name:>20}: {seconds:6.2f} s, {sum(len(c) for c in codes) / len(codes):.0f} codes "
                  "per prompt", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"machine: {torch.get_num_threads()} torch threads")
    for name in names[1:]:
        print(f"{name} vs 16 in prompt order: x{medians[names[0]] / medians[name]:.2f} per prompt "
              f"({1000 * medians[name]:.0f} vs {1000 * medians[names[0]]:.0f} ms)")

if __name__ == "__main__":
    main()
