"""GPU readiness: decode, synthesis and training figures for full-size IndexTTS v1.5 (random init) on this device.

    python bench/gpu.py               # the CUDA device when there is one, else the CPU (slow at full size)
    python bench/gpu.py --reduced     # the shipped tiny base's sizes, few codes and steps: runs anywhere in
                                      # well under a minute, so CI keeps this script working

Printed for the device:

* copy bandwidth (one large on-device copy) and, for each decode precision (bf16 and fp16 on a GPU, fp32 and
  int8 on a CPU) and 1 or 3 beams, the GPT's ms per decode step next to its memory-bandwidth floor (the bytes
  of weights one step reads / the copy bandwidth);
* end-to-end RTF with the default settings (3-beam sampling, the device's "auto" precision);
* training positions/s and peak memory with the default recipe (configs/lora.yaml) and the low-memory one
  (configs/lora-lowmem.yaml), and the epoch time that implies for 3 h of Elise-like clips;
* whether the RNG states a training checkpoint keeps (CPU, and CUDA on a GPU) restore the same random stream,
  which exact resume needs.

Decoding already writes into a preallocated (static) KV cache. CUDA graphs are not used: a graph would capture
only the backbone step, while sampling (repetition penalty, top-k/top-p, beam reordering) runs outside it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_synth import SHIPPED_BASE, copy_bandwidth, decode_weight_bytes
from bench_train import CODES_PER_SECOND, TOKENS_PER_SECOND, bucketed, elise_like_lengths, make_clips
from tagtune.audio import SAMPLE_RATE, MelSpectrogram
from tagtune.checkpoint import read_config
from tagtune.config import v1_5
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import generate_sentences
from tagtune.models.bigvgan import BigVGAN
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.precision import FLOAT_DTYPES, TRAINING_PRECISIONS, resolve_precision
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet
from tagtune.text import TextTokenizer
from tagtune.train.state import rng_state, set_rng_state

RECIPES = Path(__file__).resolve().parents[1] / "src" / "tagtune" / "configs"
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank, and then it runs home."
EPOCH_HOURS = 3.0
SPEAKER_LATENTS = 32  # conditioning positions per clip
# (codes per decode run, training steps timed, clips in the training pool)
SIZES = {"full": (100, 5, 256), "reduced": (8, 1, 24)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(reduced: bool, device: torch.device):
    """Random-init GPT and BigVGAN of full-size v1.5 (or the shipped tiny base's sizes), the tiny tokenizer."""
    torch.manual_seed(0)
    cfg = read_config(SHIPPED_BASE) if reduced else v1_5()
    gpt = UnifiedVoice(cfg.gpt).eval().to(device)
    vocoder = BigVGAN(cfg.bigvgan).eval()
    vocoder.remove_weight_norm()
    tokenizer = TextTokenizer(SHIPPED_BASE / "bpe.model", tagset=TagSet())  # its ids fit any vocabulary
    return cfg, gpt, vocoder.to(device), tokenizer


def decode_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    return ["fp32", "int8"]


def decode(tts: TTS, conds, codes: int, bandwidth: float) -> None:
    """ms per decode step for 1 and 3 beams, against weight bytes / bandwidth."""
    print(f"\n== decode ({tts.precision}), {codes} codes", flush=True)
    ids = tts.sentences(SENTENCE)[:1]
    floor = 1000 * decode_weight_bytes(tts.fast_gpt) / bandwidth
    for beams in (1, 3):
        cfg = GenerationConfig(num_beams=beams, max_new_tokens=codes)
        generate_sentences(tts.fast_gpt, ids, GenerationConfig(num_beams=beams, max_new_tokens=4), conds)  # warm
        sync(tts.device)
        t = time.perf_counter()
        _, steps = generate_sentences(tts.fast_gpt, ids, cfg, conds, torch.Generator(tts.device).manual_seed(1))
        sync(tts.device)
        ms = 1000 * (time.perf_counter() - t) / max(steps, 1)
        print(f"{beams} beam(s): {ms:7.2f} ms/step, floor {floor:6.2f} ms/step (x{ms / floor:.1f})", flush=True)


def end_to_end(tts: TTS, ref, codes: int) -> None:
    cfg = GenerationConfig(num_beams=3, max_new_tokens=codes)
    # no seed: synthesize seeds a CPU generator, and random-init weights run to the cap whatever they draw
    tts.synthesize(SENTENCE, ref, generation=GenerationConfig(num_beams=3, max_new_tokens=4))  # warm-up
    out = tts.synthesize(SENTENCE, ref, generation=cfg)
    t = out.timings
    print(f"\n== end to end, default settings (3-beam sampling, {tts.precision}): RTF {out.rtf:.3f} "
          f"(gpt {t['gpt']:.2f} / latents {t['latents']:.2f} / vocoder {t['vocoder']:.2f} s for "
          f"{out.seconds:.1f} s of audio)", flush=True)


def epoch_positions(hours: float) -> int:
    """Training positions in ``hours`` of Elise-like clips (speaker latents + text + 2 + codes + 2 each)."""
    total_s, positions, seed = 0.0, 0, 0
    while total_s < hours * 3600:
        for s in elise_like_lengths(256, seed):
            if total_s >= hours * 3600:
                break
            total_s += s
            n_codes, n_text = int(s * CODES_PER_SECOND), int(s * TOKENS_PER_SECOND) + 5  # as make_clips
            positions += SPEAKER_LATENTS + n_text + 2 + n_codes + 2
        seed += 1
    return positions


def peak_memory(device: torch.device) -> float:
    """MB: CUDA's peak allocation since the last reset, or this process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")) / 1024


def train_recipe(cfg, recipe: str, device: torch.device, steps: int, pool: int, batch_cap: int | None) -> float:
    """Positions/s of LoRA training steps with ``recipe``'s rank, micro-batch and checkpointing; prints memory."""
    from tagtune import lora
    from tagtune.train.accel import base_weights_dtype, hold_frozen_weights
    from tagtune.train.config import LossSettings, TrainConfig
    from tagtune.train.data import PadSpec, collate, precompute_conds
    from tagtune.train.loss import RowLosses, combine

    config = TrainConfig.from_yaml(RECIPES / recipe)
    batch_size = min(config.batch.batch_size, batch_cap or config.batch.batch_size)
    torch.manual_seed(config.seed)
    gpt = UnifiedVoice(cfg.gpt, dropout=0.0)
    gpt.gpt.gradient_checkpointing = config.model.gradient_checkpointing
    lora.apply_lora(gpt, config.lora.spec(), [cfg.gpt.number_text_tokens - 1])
    gpt.to(device).train()
    optimizer = torch.optim.AdamW(lora.param_groups(gpt, config.optim.lr, config.optim.weight_decay,
                                                    config.optim.tag_lr_scale))
    clips = make_clips(cfg.gpt, elise_like_lengths(pool))
    batches = bucketed([len(c["text_ids"]) + len(c["codes"]) for c in clips], batch_size, 0)[: steps + 1]
    conds = precompute_conds(gpt, [clips[i] for i in range(len(clips))], device)
    precision = resolve_precision("auto", device, TRAINING_PRECISIONS)
    held = hold_frozen_weights(gpt, base_weights_dtype(config, precision))  # as the training loop holds the base
    autocast = torch.autocast(device.type, dtype=FLOAT_DTYPES.get(precision), enabled=precision != "fp32")
    settings = LossSettings(text_weight=0.1, mask_padding=True)
    losses, pad = RowLosses(gpt, settings), PadSpec(cfg.gpt.stop_text_token, cfg.gpt.stop_mel_token,
                                                   cfg.gpt.mel_length_compression)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    positions, seconds = 0, 0.0
    for n, idx in enumerate(batches):  # the first step warms up and is not timed
        batch = collate(clips, idx, pad, conds).to(device)
        sync(device)
        t = time.perf_counter()
        with autocast:
            text_ce, mel_ce = losses(batch)
        combine(text_ce, mel_ce, settings).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if n > 0:
            positions, seconds = positions + batch.real_positions, seconds + time.perf_counter() - t
    rate = positions / seconds
    base = "base in bf16" if held else "base in fp32"
    print(f"{recipe:<18} {precision}, {base}, micro-batch {batch_size}, rank {config.lora.rank}, checkpointing "
          f"{config.model.gradient_checkpointing}: {rate:8.0f} positions/s, peak memory {peak_memory(device):7.0f} MB",
          flush=True)
    return rate


def rng_round_trip(device: torch.device) -> bool:
    """Saving the RNG states, drawing, restoring and drawing again gives the same numbers on CPU and device."""
    saved = rng_state(device)
    first = torch.rand(4), torch.rand(4, device=device)
    set_rng_state(saved, device)
    again = torch.rand(4), torch.rand(4, device=device)
    return all(torch.equal(a, b) for a, b in zip(first, again)) and (device.type != "cuda" or "cuda" in saved)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help="tiny sizes, few codes and steps (CI)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (on a CPU device)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    codes, steps, pool = SIZES["reduced" if a.reduced else "full"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cfg, gpt, vocoder, tokenizer = build(a.reduced, device)
    bandwidth = copy_bandwidth(device=device)
    print(f"{'reduced (tiny sizes)' if a.reduced else 'full-size v1.5'}, random init, on {name}; torch "
          f"{torch.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    default = resolve_precision("auto", device)
    ref_audio = (SAMPLE_RATE, (0.1 * np.sin(np.arange(3 * SAMPLE_RATE) * 2 * math.pi * 180 / SAMPLE_RATE)
                               ).astype(np.float32))
    references = TTS(gpt, vocoder, tokenizer, MelSpectrogram().to(device)).references  # one cache for all
    conds = references.get(ref_audio).conds
    for precision in dict.fromkeys([*decode_precisions(device), default]):
        tts = TTS(gpt, vocoder, tokenizer, None, precision=precision, references=references)
        decode(tts, conds, codes, bandwidth)
        if precision == default:
            end_to_end(tts, ref_audio, codes)
        del tts  # one reduced copy at a time
    print(f"\n== training, {EPOCH_HOURS:.0f} h epoch = {epoch_positions(EPOCH_HOURS)} positions", flush=True)
    del gpt, references
    for recipe in ("lora.yaml", "lora-lowmem.yaml"):
        rate = train_recipe(cfg, recipe, device, steps, pool, batch_cap=4 if a.reduced else None)
        print(f"{'':<18} epoch of {EPOCH_HOURS:.0f} h: {epoch_positions(EPOCH_HOURS) / rate / 60:.1f} min", flush=True)
    print(f"\nRNG states restore exactly (resume): {rng_round_trip(device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
