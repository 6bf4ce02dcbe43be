"""Training the speaker-prompt path (``lora.train_conditioning``): the cost of a step, three ways, in one run.

    python bench/bench_train_conditioning.py            # the shipped tiny base, the demo's batch of 16

* ``front trained``: every conditioning parameter trains, the conv front (input subsampling) included, so each
  step runs and differentiates it from the reference mels (what ``train_conditioning`` meant before);
* ``front frozen``: the front frozen, still run on every step from the mels (no gradient flows into it);
* ``cached frames``: the front frozen and run once per clip before training (``train.data.precompute_frames``);
  each step starts from its frames. What ``tagtune train`` does now.

All three train the same LoRA + tag row + conditioning on the same length-bucketed batches of synthetic clips
(Elise-like lengths; references of 2.3-6 s, the demo
corpus's range: 212-563 mel frames, mean 455) with AdamW; dropout off. Seconds per optimizer step (forward, backward,
step), median over steps and alternating rounds, so the three share whatever else the CPUs run. The last line:
``cached frames vs front trained: x<r> per step``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

import bench_train
from bench_train import bucketed, elise_like_lengths, make_clips

VARIANTS = ("front trained", "front frozen", "cached frames")


def build():
    from tagtune import lora
    from tagtune.checkpoint import load_gpt
    from tagtune.folders import shipped_base
    from tagtune.lora import LoraSpec

    gpt = load_gpt(shipped_base())
    new_row = [gpt.cfg.number_text_tokens - 1]
    return gpt, lambda g: lora.apply_lora(g, LoraSpec(rank=16, alpha=32, dropout=0.0, train_conditioning=True),
                                          new_row)


def prepare(variant: str, base, apply, dataset):
    from tagtune import lora
    from tagtune.train.data import precompute_frames

    gpt = apply(copy.deepcopy(base))
    if variant == "front trained":
        for name, p in gpt.named_parameters():
            if "conditioning_encoder" in name and ".embed." in name and "original_module" not in name:
                p.requires_grad_(True)
    t = time.perf_counter()
    cache = precompute_frames(gpt, dataset, "cpu") if variant == "cached frames" else None
    setup_s = time.perf_counter() - t
    optimizer = torch.optim.AdamW(lora.param_groups(gpt, lr=1e-4, weight_decay=0.01, tag_lr_scale=5.0))
    return gpt.train(), cache, optimizer, setup_s


def step_seconds(gpt, cache, optimizer, dataset, batches) -> list[float]:
    from tagtune.train.config import LossSettings
    from tagtune.train.data import collate, pad_spec
    from tagtune.train.loss import RowLosses, combine

    settings = LossSettings(text_weight=0.1, mask_padding=True)
    losses = RowLosses(gpt, settings)
    out = []
    for idx in batches:
        batch = collate(dataset, idx, pad_spec(gpt), cache)
        t = time.perf_counter()
        text_ce, mel_ce = losses(batch)
        combine(text_ce, mel_ce, settings).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-seconds", type=float, nargs=2, default=(2.3, 6.0), metavar=("LO", "HI"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, apply = build()
    bench_train.REF_SECONDS = tuple(args.ref_seconds)
    dataset = make_clips(base.cfg, elise_like_lengths(args.clips))
    lengths = [len(c["text_ids"]) + len(c["codes"]) for c in dataset]
    runs = {v: prepare(v, base, apply, dataset) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        batches = bucketed(lengths, args.batch_size, seed=r)[: args.steps + 1]
        for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            gpt, cache, optimizer, _ = runs[v]
            times[v] += step_seconds(gpt, cache, optimizer, dataset, batches)[1:]
    print(f"tiny base ({Path(__file__).name}), batch {args.batch_size}, references {args.ref_seconds[0]:g}-"
          f"{args.ref_seconds[1]:g} s, {args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    median = {v: statistics.median(times[v]) for v in VARIANTS}
    for v in VARIANTS:
        trainable = sum(p.numel() for p in runs[v][0].parameters() if p.requires_grad)
        print(f"  {v:14s} {median[v]:.3f} s/step  x{median['front trained'] / median[v]:.2f}  "
              f"trainable {trainable:,}  setup {runs[v][3]:.1f} s for {args.clips} clips")
    print(f"cached frames vs front trained: x{median['front trained'] / median['cached frames']:.2f} per step")


if __name__ == "__main__":
    main()
