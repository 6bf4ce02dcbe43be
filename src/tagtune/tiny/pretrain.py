"""Pre-training the tiny GPT on untagged clips with the official training forward.

Each example is (text ids, DVAE codes, wav length) of one clip, conditioned on a random crop of ANOTHER
clip of the same speaker (a clip conditioned on itself teaches the model to copy its prompt). The loss is
the official forward's ``TEXT_WEIGHT * loss_text + loss_mel``; batches are drawn from length-sorted chunks
so that little of each batch is padding. Step counts, not wall time, bound training: the same seed gives
the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from tagtune.config import GPTConfig
from tagtune.models.unified_voice import UnifiedVoice

TEXT_WEIGHT = 0.1  # text CE is an auxiliary loss (0.1 as in public IndexTTS-1.5 fine-tuning recipes)
COND_MAX_FRAMES = 200  # ~2.1 s of prompt: enough for a speaker identity, cheap for the conformer
SORT_CHUNK_BATCHES = 8  # length-sort within chunks of 8 batches: little padding, still random batches
WARMUP_STEPS = 40
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0


@dataclass
class Example:
    """One clip as the GPT trains on it."""

    text_ids: torch.Tensor  # (Lt,) int64
    codes: torch.Tensor  # (Lc,) int64
    wav_len: int  # samples at 24 kHz
    speaker: str


@dataclass
class PretrainSettings:
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    dropout: float = 0.0  # a few epochs on 2000 clips do not overfit; dropout only slows learning here
    seed: int = 0


def lr_at(step: int, s: PretrainSettings) -> float:
    """Linear warm-up then cosine decay to MIN_LR_FRACTION of the peak."""
    if step < WARMUP_STEPS:
        return s.lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, s.steps - WARMUP_STEPS)
    return s.lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(examples: list[Example], indices: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches: shuffle, sort chunks by code length, cut into batches, shuffle the batches."""
    order = [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()]
    chunk = batch_size * SORT_CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(examples[i].codes))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def pick_prompt(index: int, examples: list[Example], pools: dict[str, list[int]], gen: torch.Generator) -> int:
    """Another clip of the same speaker (the clip itself only when it is the speaker's only one)."""
    pool = [j for j in pools[examples[index].speaker] if j != index] or [index]
    return pool[int(torch.randint(len(pool), (1,), generator=gen))]


def crop(mel: torch.Tensor, frames: int, gen: torch.Generator | None) -> torch.Tensor:
    """A window of at most ``frames`` frames (random start with ``gen``, else the start): (100, <=frames)."""
    if mel.shape[1] <= frames:
        return mel
    start = int(torch.randint(mel.shape[1] - frames + 1, (1,), generator=gen)) if gen is not None else 0
    return mel[:, start : start + frames]


def collate(examples: list[Example], rows: list[int], prompts: list[torch.Tensor]) -> dict:
    """Right-padded tensors in the argument layout of ``UnifiedVoice.forward``."""
    ex = [examples[i] for i in rows]
    return {
        "cond_mel": pad_sequence([p.T for p in prompts], batch_first=True).transpose(1, 2),  # (B, 100, T)
        "cond_mel_lengths": torch.tensor([p.shape[1] for p in prompts]),
        "text_ids": pad_sequence([e.text_ids for e in ex], batch_first=True, padding_value=1),
        "text_lengths": torch.tensor([len(e.text_ids) for e in ex]),
        "codes": pad_sequence([e.codes for e in ex], batch_first=True),
        "wav_lengths": torch.tensor([e.wav_len for e in ex]),
    }


def make_batch(rows, examples, mels, pools, gen) -> dict:
    prompts = [crop(mels[pick_prompt(i, examples, pools, gen)], COND_MAX_FRAMES, gen) for i in rows]
    return collate(examples, rows, prompts)


def _loss(model: UnifiedVoice, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    loss_text, loss_mel, _ = model(batch["cond_mel"], batch["text_ids"], batch["text_lengths"], batch["codes"],
                                   batch["wav_lengths"], cond_mel_lengths=batch["cond_mel_lengths"])
    return loss_text, loss_mel


def fixed_prompts(indices: list[int], examples: list[Example], pools: dict[str, list[int]],
                  mels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Deterministic prompts for evaluation: the first other clip of the speaker, from its start."""
    out = []
    for i in indices:
        pool = [j for j in pools[examples[i].speaker] if j != i] or [i]
        out.append(crop(mels[pool[0]], COND_MAX_FRAMES, None))
    return out


@torch.no_grad()
def evaluate(model: UnifiedVoice, examples: list[Example], indices: list[int], mels: list[torch.Tensor],
             pools: dict[str, list[int]], batch_size: int = 16) -> dict[str, float]:
    """Token-averaged text and mel CE over ``indices``, padding masked (each row as if alone)."""
    was_training = model.training
    model.eval()
    prompts = fixed_prompts(indices, examples, pools, mels)
    sums = {"text": 0.0, "mel": 0.0}
    counts = {"text": 0, "mel": 0}
    for start in range(0, len(indices), batch_size):
        b = collate(examples, indices[start : start + batch_size], prompts[start : start + batch_size])
        out = model.logits(b["cond_mel"], b["text_ids"], b["text_lengths"], b["codes"], b["wav_lengths"],
                           b["cond_mel_lengths"], mask_padding=True, mask_loss=True)
        for name, logits, target in (("text", out.text_logits, out.text_targets),
                                     ("mel", out.mel_logits, out.mel_targets)):
            ce = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            sums[name] += ce.item()
            counts[name] += int((target != -100).sum())
    model.train(was_training)
    return {f"{k}_loss": sums[k] / max(counts[k], 1) for k in sums}


def pretrain(cfg: GPTConfig, examples: list[Example], mels: list[torch.Tensor], train_idx: list[int],
             val_idx: list[int], s: PretrainSettings, log=print) -> tuple[UnifiedVoice, dict]:
    """Build a UnifiedVoice (seeded) and train it for ``s.steps`` steps; returns it (eval mode) and a history."""
    torch.manual_seed(s.seed)
    model = UnifiedVoice(cfg, dropout=s.dropout)
    gen = torch.Generator().manual_seed(s.seed + 1)
    pools_train = same_speaker(examples, train_idx)
    pools_val = same_speaker(examples, train_idx + val_idx)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.98))
    history = {"initial_val": evaluate(model, examples, val_idx, mels, pools_val), "train": []}
    model.train()
    queue: list[list[int]] = []
    for step in range(s.steps):
        queue = queue or batch_order(examples, train_idx, s.batch_size, gen)
        batch = make_batch(queue.pop(0), examples, mels, pools_train, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        loss_text, loss_mel = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        (TEXT_WEIGHT * loss_text + loss_mel).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if step % 50 == 0 or step == s.steps - 1:
            history["train"].append({"step": step, "text_loss": round(loss_text.item(), 4),
                                     "mel_loss": round(loss_mel.item(), 4)})
            log(f"gpt step {step}: text {loss_text.item():.3f} mel {loss_mel.item():.3f}")
    model.eval()
    history["final_val"] = evaluate(model, examples, val_idx, mels, pools_val)
    return model, history


def same_speaker(examples: list[Example], indices: list[int]) -> dict[str, list[int]]:
    """Speaker -> indices among ``indices``."""
    pools: dict[str, list[int]] = {}
    for i in indices:
        pools.setdefault(examples[i].speaker, []).append(i)
    return pools
