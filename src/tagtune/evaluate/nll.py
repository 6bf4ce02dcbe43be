"""Teacher-forced negative log-likelihood of a clip's codes, per code, for many text variants at once.

A row is (speaker latents, text ids, codes, waveform length). Rows are right-padded into batches and run
with ``mask_padding``, so each row's numbers equal its unpadded run whatever shares its batch. The result for
a row of N codes holds N + 1 values: the NLL of code 0 .. N-1 and of the stop code that ends the clip.

On IndexTTS-2 a row's conditioning is the pair (speaker latents, emotion vector) that its 34-position prefix is
made of (``item_conditioning`` reads either family's items), the codes are semantic codes and all of them count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

MAX_BATCH_ROWS = 16
MAX_BATCH_POSITIONS = 4096  # rows x padded (text + codes) per forward, to bound memory on long clips


@dataclass
class ScoreRow:
    """One teacher-forced sequence to score."""

    conds: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (32, D) latents; IndexTTS-2: + emotion vector (D,)
    text_ids: torch.Tensor  # (Lt,)
    codes: torch.Tensor  # (Lc,)
    wav_len: int

    @property
    def cost(self) -> int:
        return len(self.text_ids) + len(self.codes)


@torch.no_grad()
def speaker_latents(gpt, cond_mels: list[torch.Tensor], batch: int = MAX_BATCH_ROWS) -> list[torch.Tensor]:
    """Conditioning latents (32, D) for reference log-mels (n_mels, T), computed without padding leaks."""
    device = next(gpt.parameters()).device
    out = []
    for s in range(0, len(cond_mels), batch):
        part = cond_mels[s : s + batch]
        lengths = torch.tensor([m.shape[1] for m in part], device=device)
        mels = pad_sequence([m.T for m in part], batch_first=True).transpose(1, 2).to(device)  # (B, n_mels, T)
        latents = gpt.get_conditioning(mels.float(), lengths, mask_padding=True)  # (B, 32, D)
        out += [x.float() for x in latents]
    return out


@torch.no_grad()
def item_conditioning(gpt, items: list[dict], batch: int = MAX_BATCH_ROWS) -> list:
    """Each prepared item's conditioning: speaker latents (32, D) of its reference log-mel (1.x), or on
    IndexTTS-2 (speaker latents (32, D), emotion vector (D,)) of its speaker and emotion clips' features."""
    if not items or "spk_features" not in items[0]:
        return speaker_latents(gpt, [it["cond_mel"] for it in items], batch)
    device = next(gpt.parameters()).device
    out = []
    for s in range(0, len(items), batch):
        part = items[s : s + batch]
        spk, emo = ([it[k] for it in part] for k in ("spk_features", "emo_features"))  # each (T, 1024)
        lengths = [torch.tensor([f.shape[0] for f in feats], device=device) for feats in (spk, emo)]
        conds = gpt.get_conditioning(pad_sequence(spk, batch_first=True).to(device).float(), lengths[0],
                                     mask_padding=True)  # (B, 32, D)
        emovec = gpt.get_emovec(pad_sequence(emo, batch_first=True).to(device).float(), lengths[1],
                                mask_padding=True)  # (B, D)
        out += [(c.float(), e.float()) for c, e in zip(conds, emovec)]
    return out


def generation_prefix(gpt, conds: list) -> torch.Tensor:
    """What generation puts before the text for a batch of ``item_conditioning`` values: the speaker latents
    (B, 32, D), or IndexTTS-2's 34-position prefix (B, 34, D)."""
    if isinstance(conds[0], tuple):
        return gpt.conditioning_prefix(torch.stack([c for c, _ in conds]), torch.stack([e for _, e in conds]))
    return torch.stack(conds)


def _batches(rows: list[ScoreRow]) -> list[list[int]]:
    """Row indices grouped by length so that padding stays small and each batch fits the budget."""
    order = sorted(range(len(rows)), key=lambda i: rows[i].cost)
    batches, current, longest = [], [], 0
    for i in order:
        longest_if = max(longest, rows[i].cost)
        if current and (len(current) >= MAX_BATCH_ROWS or longest_if * (len(current) + 1) > MAX_BATCH_POSITIONS):
            batches.append(current)
            current, longest_if = [], rows[i].cost
        current.append(i)
        longest = longest_if
    return batches + ([current] if current else [])


@torch.no_grad()
def _score_batch(gpt, rows: list[ScoreRow]) -> list[torch.Tensor]:
    cfg, device = gpt.cfg, next(gpt.parameters()).device
    text = pad_sequence([r.text_ids.long() for r in rows], batch_first=True, padding_value=cfg.stop_text_token)
    codes = pad_sequence([r.codes.long() for r in rows], batch_first=True, padding_value=cfg.stop_mel_token)
    text_lengths = torch.tensor([len(r.text_ids) for r in rows])
    if isinstance(rows[0].conds, tuple):  # IndexTTS-2: speaker latents + emotion vector; every code is kept
        conds, emovec = (torch.stack([r.conds[k] for r in rows]).to(device) for k in (0, 1))  # (B, 32, D), (B, D)
        code_lengths = torch.tensor([len(r.codes) for r in rows], device=device)
        out = gpt.logits(conds, emovec, text.to(device), text_lengths.to(device), codes.to(device), code_lengths,
                         mask_padding=True)
    else:
        wav_lengths = torch.tensor([r.wav_len for r in rows])
        conds = torch.stack([r.conds for r in rows]).to(device)  # (B, 32, D)
        out = gpt.logits(None, text.to(device), text_lengths.to(device), codes.to(device), wav_lengths.to(device),
                         conds=conds, mask_padding=True)
    nll = F.cross_entropy(out.mel_logits.float(), out.mel_targets, reduction="none")  # (B, Lc+2)
    return [nll[b, : len(r.codes) + 1].cpu() for b, r in enumerate(rows)]


def code_nll(gpt, rows: list[ScoreRow]) -> list[torch.Tensor]:
    """Per row, the NLL (nats) of each of its codes and of the final stop code: (Lc + 1,) tensors."""
    result: list[torch.Tensor | None] = [None] * len(rows)
    for batch in _batches(rows):
        for i, values in zip(batch, _score_batch(gpt, [rows[i] for i in batch])):
            result[i] = values
    return result  # type: ignore[return-value]
