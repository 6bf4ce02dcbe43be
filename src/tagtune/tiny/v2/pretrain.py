"""Pre-training the tiny IndexTTS-2 GPT on untagged clips with the IndexTTS-2 objective of ``models.v2.objective``.

Each example is (text ids, semantic codes, features) of one clip. The speaker prompt is a random crop of
ANOTHER clip of the same speaker, and the emotion prompt is the same crop: at synthesis the official pipeline
reads the emotion from the speaker prompt unless told otherwise, and an untagged corpus has no emotion to
separate. The loss is ``TEXT_WEIGHT * text CE + code CE`` per clip (``RowLossesV2``), averaged over the batch;
step counts, not time, bound training, so a seed gives the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tagtune.config import GPTV2Config
from tagtune.generation.v2 import generate_codes_v2, official_v2
from tagtune.models.v2.gpt import UnifiedVoiceV2
from tagtune.models.v2.objective import RowLossesV2, collate_v2
from tagtune.tiny.pretrain import (
    GRAD_CLIP,
    TEXT_WEIGHT,
    WEIGHT_DECAY,
    PretrainSettings,
    batch_order,
    lr_at,
    pick_prompt,
)

PROMPT_ROWS = 100  # 2 s of features at 50 rows/s: a speaker identity, cheap for the conformers
CHECK_MAX_NEW = 600  # the length limit of the stop check (also capped by max_mel_tokens)


@dataclass
class ExampleV2:
    """One clip as the v2 GPT trains on it."""

    text_ids: torch.Tensor  # (Lt,) int64
    codes: torch.Tensor  # (Lc,) int64 semantic codes
    features: torch.Tensor  # (Lc, 1024) float16 normalised w2v-BERT states (the prompt source)
    speaker: str


def same_speaker(examples: list[ExampleV2], indices: list[int]) -> dict[str, list[int]]:
    pools: dict[str, list[int]] = {}
    for i in indices:
        pools.setdefault(examples[i].speaker, []).append(i)
    return pools


def prompt_rows(features: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """At most PROMPT_ROWS rows (a random window with ``gen``, else the start), float32."""
    n = features.shape[0]
    start = int(torch.randint(n - PROMPT_ROWS + 1, (1,), generator=gen)) if gen is not None and n > PROMPT_ROWS else 0
    return features[start : start + PROMPT_ROWS].float()


def _other(i: int, examples: list[ExampleV2], pools: dict[str, list[int]], gen: torch.Generator | None) -> int:
    """Another clip of the same speaker: drawn with ``gen``, else the first (fixed prompts)."""
    if gen is not None:
        return pick_prompt(i, examples, pools, gen)
    return ([j for j in pools[examples[i].speaker] if j != i] or [i])[0]


def make_items(rows: list[int], examples: list[ExampleV2], pools: dict[str, list[int]],
               gen: torch.Generator | None) -> list[dict]:
    """Items in the layout of ``PreparedDatasetV2`` (what ``collate_v2`` reads); no gen: fixed prompts."""
    items = []
    for i in rows:
        prompt = prompt_rows(examples[_other(i, examples, pools, gen)].features, gen)
        e = examples[i]
        items.append({"id": i, "text_ids": e.text_ids, "codes": e.codes, "spk_features": prompt,
                      "emo_features": prompt, "has_tag": False, "tags": []})
    return items


@torch.no_grad()
def evaluate(model, examples: list[ExampleV2], indices: list[int], pools: dict[str, list[int]],
             batch_size: int = 16) -> dict[str, float]:
    """Token-averaged text and code CE over ``indices`` (fixed prompts, padding masked)."""
    was_training = model.training
    model.eval()
    losses = RowLossesV2(model)
    sums, counts = {"text": 0.0, "mel": 0.0}, {"text": 0, "mel": 0}
    for s in range(0, len(indices), batch_size):
        rows = indices[s : s + batch_size]
        batch = collate_v2(make_items(rows, examples, pools, None), model.cfg)
        text, mel = losses(batch)
        n_text, n_mel = batch.text_lengths + 1, batch.code_lengths + 1  # targets: tokens + stop
        sums["text"] += float((text * n_text).sum())
        sums["mel"] += float((mel * n_mel).sum())
        counts["text"] += int(n_text.sum())
        counts["mel"] += int(n_mel.sum())
    model.train(was_training)
    return {f"{k}_loss": sums[k] / max(counts[k], 1) for k in sums}


def pretrain(cfg: GPTV2Config, examples: list[ExampleV2], train_idx: list[int], val_idx: list[int],
             s: PretrainSettings, log=print) -> tuple[torch.nn.Module, dict]:
    """A seeded UnifiedVoiceV2 trained for ``s.steps`` steps; returns it (eval mode) and a history."""
    torch.manual_seed(s.seed)
    model = UnifiedVoiceV2(cfg, dropout=s.dropout)
    gen = torch.Generator().manual_seed(s.seed + 1)
    pools_train = same_speaker(examples, train_idx)
    pools_val = same_speaker(examples, train_idx + val_idx)
    losses = RowLossesV2(model)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.98))
    history = {"initial_val": evaluate(model, examples, val_idx, pools_val), "train": []}
    model.train()
    queue: list[list[int]] = []
    for step in range(s.steps):
        queue = queue or batch_order(examples, train_idx, s.batch_size, gen)
        batch = collate_v2(make_items(queue.pop(0), examples, pools_train, gen), cfg)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        text, mel = losses(batch)
        loss = (TEXT_WEIGHT * text + mel).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if step % 50 == 0 or step == s.steps - 1:
            history["train"].append({"step": step, "text_loss": round(float(text.detach().mean()), 4),
                                     "mel_loss": round(float(mel.detach().mean()), 4)})
            log(f"gpt v2 step {step}: text {float(text.detach().mean()):.3f} codes {float(mel.detach().mean()):.3f}")
    model.eval()
    history["final_val"] = evaluate(model, examples, val_idx, pools_val)
    return model, history


@torch.no_grad()
def check_generation(model, examples: list[ExampleV2], indices: list[int], prompt_pool: list[int],
                     seed: int) -> list[dict]:
    """Sample codes with the official IndexTTS2 decoding for some texts: did each stop, and how long?"""
    pools = same_speaker(examples, prompt_pool + indices)
    gen = torch.Generator().manual_seed(seed)
    max_new = min(CHECK_MAX_NEW, model.cfg.max_mel_tokens)
    out = []
    for i in indices:
        prompt = prompt_rows(examples[_other(i, examples, pools, None)].features, None)[None]
        emovec = model.get_emovec(prompt)
        res = generate_codes_v2(model, prompt, examples[i].text_ids[None], emovec,
                                official_v2(max_new_tokens=max_new), generator=gen)
        n = int(res.lengths[0])
        out.append({"clip": i, "stopped": bool((res.codes[0] == model.cfg.stop_mel_token).any()), "codes": n,
                    "real_codes": int(len(examples[i].codes)),
                    "distinct_codes": int(res.codes[0, :n].unique().numel())})
    return out
