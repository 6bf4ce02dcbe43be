"""Training throughput and peak memory: tagtune's loop vs a notebook-style baseline, measured in one run.

    python bench/bench_train.py                 # tiny fixture-sized model and full-size v1.5 (random init)
    python bench/bench_train.py --models tiny   # seconds

Both sides train the same random-init GPT with the same LoRA (rank 16, all four targets) and AdamW on clips
with an Elise-like length mix (1-10 s of speech, ~3.5 text tokens per second):

* tagtune: length-bucketed batches, SDPA attention, padding masked, speaker latents computed once per clip
  (the conditioning encoder is frozen); measured three times: ``tagtune-fp32``, ``tagtune-bf16`` (the loss
  forward under bf16 autocast, the frozen block matrices held in bf16 as ``runtime.base_weights: auto`` holds
  them; adapters, tag rows and optimizer state in fp32) and ``tagtune-bf16-fp32-base`` (the same with the
  frozen base kept in fp32: autocast rounds it at every forward, to the same numbers).
* baseline: pad-to-longest batches in random order, eager attention (an explicit softmax(QK^T)V, switched
  on inside this script only), the conditioning encoder run on every step, the official unmasked loss, fp32.

Throughput counts real sequence positions (32 speaker latents + text + 2 + kept codes + 2 per clip) per
second of optimizer step, median over steps and over alternating rounds (the CPUs may be shared). Each
measurement runs in its own process so that peak RSS belongs to it.
The goal is tagtune >= 2x the baseline. The last line is the speed-up of the precision tagtune trains in by
default on this CPU (``runtime.precision: auto``: bf16 where the CPU has native bf16, else fp32), full-size when
v1.5 was measured, else tiny: ``full-size speed-up: x<r> (...)``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

SAMPLE_RATE = 24000
CODES_PER_SECOND = SAMPLE_RATE / 1024
TOKENS_PER_SECOND = 3.5
POOL = 256  # clips per simulated epoch
BUCKET_BATCHES = 50
REF_SECONDS = (1.0, 6.0)  # reference (conditioning) audio, cropped like the data pipeline does
TAGTUNE = ("tagtune-fp32", "tagtune-bf16", "tagtune-bf16-fp32-base")  # tagtune's variants, against "baseline"
LABELS = {"tagtune-fp32": "fp32", "tagtune-bf16": "bf16 autocast, base held in bf16",
          "tagtune-bf16-fp32-base": "bf16 autocast, base in fp32"}
SETTINGS = {  # model -> (batch size, timed steps, warm-up steps, rounds)
    "tiny": (8, 12, 2, 3),
    "v1.5": (4, 1, 1, 1),
}


def elise_like_lengths(n: int, seed: int = 0) -> list[float]:
    """Clip durations in seconds, log-normal around 3.5 s, clipped to 1-10 s (Elise's shape)."""
    g = torch.Generator().manual_seed(seed)
    seconds = torch.exp(torch.randn(n, generator=g) * 0.5 + math.log(3.5)).clamp(1.0, 10.0)
    return seconds.tolist()


def model_config(name: str):
    from tagtune.checkpoint import read_config
    from tagtune.config import v1_5

    if name == "v1.5":
        return v1_5().gpt
    from pathlib import Path

    return read_config(Path(__file__).resolve().parents[2] / "shared/fixtures/indextts-tiny/checkpoint").gpt


def make_clips(cfg, seconds: list[float], seed: int = 1) -> list[dict]:
    """Synthetic training examples with the shapes real ones have."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    for s in seconds:
        n_codes = min(int(s * CODES_PER_SECOND), cfg.max_mel_tokens - 2)
        n_text = min(int(s * TOKENS_PER_SECOND) + 5, cfg.max_text_tokens)
        ref_frames = int(torch.empty(1).uniform_(*REF_SECONDS, generator=g).item() * SAMPLE_RATE / 256)
        clips.append({
            "text_ids": torch.randint(2, cfg.number_text_tokens, (n_text,), generator=g),
            "codes": torch.randint(0, cfg.number_mel_codes - 2, (n_codes,), generator=g),
            "wav_len": n_codes * 1024 - 512,
            "cond_mel": torch.randn(100, ref_frames, generator=g),
            "tags": [], "has_tag": False, "events": None, "id": len(clips),
        })
    return clips


def bucketed(lengths: list[int], size: int, seed: int) -> list[list[int]]:
    from tagtune.data import LengthBucketSampler

    return [b for b in LengthBucketSampler(lengths, size, seed=seed, drop_last=True).batches() if len(b) == size]


def random_order(n: int, size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + size] for i in range(0, n - size + 1, size)]


def eager_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    """softmax(QK^T / sqrt(d)) V with explicit (B, H, T, S) score tensors, as GPT-2's eager path computes it."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    weights = F.dropout(scores.softmax(-1), dropout_p)
    return weights @ v


def build(name: str):
    from tagtune import lora
    from tagtune.lora import LoraSpec
    from tagtune.models.unified_voice import UnifiedVoice

    torch.manual_seed(0)
    cfg = model_config(name)
    gpt = UnifiedVoice(cfg, dropout=0.0)
    lora.apply_lora(gpt, LoraSpec(rank=16, alpha=32, dropout=0.0), [cfg.number_text_tokens - 1])
    optimizer = torch.optim.AdamW(lora.param_groups(gpt, lr=1e-4, weight_decay=0.01, tag_lr_scale=5.0))
    return gpt.train(), cfg, optimizer


def measure(name: str, variant: str, queue) -> None:
    """One process: build, warm up, time optimizer steps; report positions/s and peak RSS."""
    torch.set_num_threads(2)
    from tagtune.train.config import LossSettings
    from tagtune.train.data import PadSpec, collate, precompute_conds
    from tagtune.train.loss import RowLosses, combine

    batch_size, steps, warmup, _ = SETTINGS[name]
    gpt, cfg, optimizer = build(name)
    dataset = make_clips(cfg, elise_like_lengths(POOL))
    pad = PadSpec(cfg.stop_text_token, cfg.stop_mel_token, cfg.mel_length_compression)
    lengths = [len(c["text_ids"]) + len(c["codes"]) for c in dataset]
    ours = variant in TAGTUNE
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("tagtune-bf16"))
    if not ours:
        import tagtune.models.gpt2 as gpt2_module

        gpt2_module.F.scaled_dot_product_attention = eager_attention  # this process only
    batches = bucketed(lengths, batch_size, 0) if ours else random_order(len(dataset), batch_size, 0)
    batches = batches[: warmup + steps]
    t0 = time.perf_counter()
    conds = None
    if ours:
        used = sorted({i for b in batches for i in b})
        conds = precompute_conds(gpt, [dataset[i] for i in used], "cpu")
        conds = {i: conds[k] for k, i in enumerate(used)}
    setup_s = time.perf_counter() - t0
    if variant == "tagtune-bf16":
        from tagtune.train.accel import hold_frozen_weights

        hold_frozen_weights(gpt, torch.bfloat16)
    settings = LossSettings(text_weight=0.1, mask_padding=ours)
    losses = RowLosses(gpt, settings)
    rates = []  # positions/s of each timed step; the median resists other processes' bursts
    for n, idx in enumerate(batches):
        batch = collate(dataset, idx, pad, conds)
        t = time.perf_counter()
        with autocast:
            text_ce, mel_ce = losses(batch)
        combine(text_ce, mel_ce, settings).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if n >= warmup:
            rates.append(batch.real_positions / (time.perf_counter() - t))
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork/exec)
    peak_mb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")) / 1024
    queue.put({"model": name, "variant": variant, "positions_per_s": statistics.median(rates), "peak_rss_mb": peak_mb,
               "steps": steps, "batch_size": batch_size, "setup_s": setup_s})


def run(name: str, variant: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(name, variant, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "v1.5"], choices=sorted(SETTINGS))
    args = parser.parse_args()
    variants = ["baseline", *TAGTUNE]
    ratios: dict[str, dict[str, float]] = {}  # model -> tagtune variant -> speed-up over the baseline
    for name in args.models:
        rounds: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(SETTINGS[name][3]):  # alternate the variants so that load changes hit both
            for variant in variants:
                rounds[variant].append(run(name, variant))
                print(json.dumps(rounds[variant][-1]), flush=True)
        median = {v: sorted(rs, key=lambda r: r["positions_per_s"])[len(rs) // 2] for v, rs in rounds.items()}
        base = median["baseline"]
        for variant in variants[1:]:
            ours = median[variant]
            ratio = ratios.setdefault(name, {})[variant] = ours["positions_per_s"] / base["positions_per_s"]
            print(f"{name} {variant}: {ours['positions_per_s']:.0f} vs baseline {base['positions_per_s']:.0f} "
                  f"positions/s -> {ratio:.2f}x (goal >= 2x); peak RSS {ours['peak_rss_mb']:.0f} vs "
                  f"{base['peak_rss_mb']:.0f} MB; one-off speaker latents {ours['setup_s']:.1f} s", flush=True)
    print(summary(ratios), flush=True)


def default_variant() -> str:
    """The tagtune variant in the precision a recipe's ``runtime.precision: auto`` trains in on this CPU."""
    from tagtune.precision import TRAINING_PRECISIONS, resolve_precision

    return f"tagtune-{resolve_precision('auto', 'cpu', TRAINING_PRECISIONS)}"


def summary(ratios: dict[str, dict[str, float]]) -> str:
    """``full-size speed-up: x<r> (...)``: the default precision's speed-up, full-size when measured, else tiny."""
    name = "v1.5" if "v1.5" in ratios else next(iter(ratios))
    ours = default_variant()
    others = "; ".join(f"{LABELS[v]} x{ratios[name][v]:.2f}" for v in TAGTUNE if v != ours)
    return (f"{'full-size' if name == 'v1.5' else name} speed-up: x{ratios[name][ours]:.2f} "
            f"(tagtune {LABELS[ours]}, the CPU default here; {others})")


if __name__ == "__main__":
    main()
