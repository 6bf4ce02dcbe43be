"""The training objective: per-clip text and mel cross-entropy on the official layout (spec §2.4).

``RowLosses`` is an ``nn.Module`` so that DistributedDataParallel can wrap it: DDP only synchronises
gradients of a forward it ran itself. Per-clip losses (rather than one batch mean) let the loop log tagged
and untagged clips separately and make the loss of a global batch independent of how its clips are split
across processes and accumulation steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.models.contrast import ContrastRows, contrast_penalty
from tagtune.models.unified_voice import COND_LATENTS, IGNORE_INDEX, onset_weights, position_ce, row_ce, row_mean
from tagtune.train.config import LossSettings

MEL_COMPRESSION = 1024  # 24 kHz samples per DVAE code


@dataclass
class Batch:
    """A collated micro-batch (right-padded)."""

    text_ids: torch.Tensor  # (B, Lt)
    text_lengths: torch.Tensor  # (B,)
    codes: torch.Tensor  # (B, Lm)
    wav_lengths: torch.Tensor  # (B,) samples at 24 kHz
    cond_mels: torch.Tensor | None  # (B, 100, T) reference log-mels, or None when conds are given
    cond_lengths: torch.Tensor | None  # (B,)
    has_tag: torch.Tensor  # (B,) bool
    tags: list[list[str]]  # canonical tags of each clip
    conds: torch.Tensor | None = None  # (B, 32, D) precomputed speaker latents
    cond_frames: torch.Tensor | None = None  # (B, T', C) cached subsampled reference frames (the conditioning trains)
    cond_frame_lengths: torch.Tensor | None = None  # (B,)
    base_log_probs: torch.Tensor | None = None  # (B, V, Lm+2) the base's distributions (replay.base_kl), 0 elsewhere
    base_rows: torch.Tensor | None = None  # (B,) bool: the rows that have them
    onsets: list[list[int]] | None = None  # per row, the first code of each tagged event (loss.onset_weight)
    contrast: ContrastRows | None = None  # contrast texts of tagged rows (loss.tag_contrast, train.contrast)

    def to(self, device) -> Batch:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor | ContrastRows) else t  # noqa: E731
        return Batch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))

    @property
    def positions(self) -> int:
        """Sequence positions the backbone processes, padding included: B x (32 + Lt+2 + Lm+2)."""
        return self.text_ids.shape[0] * (COND_LATENTS + self.text_ids.shape[1] + self.codes.shape[1] + 4)

    @property
    def real_positions(self) -> int:
        """Positions that belong to a clip (its conds, text + 2, codes kept by the official rule + 2)."""
        code_lengths = ((self.wav_lengths + MEL_COMPRESSION - 1) // MEL_COMPRESSION + 1).clamp(max=self.codes.shape[1])
        return int((COND_LATENTS + self.text_lengths + 2 + code_lengths + 2).sum())


class RowLosses(nn.Module):
    """``forward(batch) -> (text CE (B,), mel CE (B,))`` for each clip of the batch.

    With ``base_kl`` > 0 the mel term of the rows that carry the base's distributions (``Batch.base_rows``) adds
    ``base_kl`` x their KL from them (``row_kl``; the distributions: train/base_kl.py)."""

    def __init__(self, gpt: nn.Module, settings: LossSettings, base_kl: float = 0.0):
        super().__init__()
        self.gpt = gpt
        self.mask_padding = settings.mask_padding
        self.base_kl = base_kl
        self.onset_weight, self.onset_codes = settings.onset_weight, settings.onset_codes
        self.tag_contrast, self.contrast_margin = settings.tag_contrast, settings.contrast_margin

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        conds = batch.conds
        if batch.cond_frames is not None:
            conds = self.gpt.conditioning_from_frames(batch.cond_frames, batch.cond_frame_lengths,
                                                      mask_padding=self.mask_padding)
        if conds is None and self.tag_contrast and batch.contrast is not None:  # computed once for both texts
            conds = self.gpt.get_conditioning(batch.cond_mels, batch.cond_lengths, mask_padding=self.mask_padding)
        mels = None if conds is not None else batch.cond_mels
        out = self.gpt.logits(
            mels, batch.text_ids, batch.text_lengths, batch.codes, batch.wav_lengths, batch.cond_lengths, conds=conds,
            mask_padding=self.mask_padding, mask_loss=self.mask_padding,
        )
        weights = onset_weights(out.mel_targets.shape, batch.onsets, self.onset_weight, self.onset_codes)
        code_ce = position_ce(out.mel_logits, out.mel_targets)  # (B, L), the contrast term reads it too
        mel = row_mean(code_ce, out.mel_targets, weights)
        if self.tag_contrast and batch.contrast is not None:
            c = batch.contrast
            other = self.gpt.logits(None, c.text_ids, c.text_lengths, batch.codes[c.rows], batch.wav_lengths[c.rows],
                                    None, conds=conds[c.rows], mask_padding=self.mask_padding,
                                    mask_loss=self.mask_padding)
            mel = mel + contrast_penalty(code_ce,
                                         position_ce(other.mel_logits, other.mel_targets), c, self.tag_contrast,
                                         self.contrast_margin, len(mel))
        if self.base_kl and batch.base_log_probs is not None:
            kl = row_kl(out.mel_logits, batch.base_log_probs, out.mel_targets)
            mel = mel + self.base_kl * kl * batch.base_rows
        return row_ce(out.text_logits, out.text_targets), mel


def row_kl(mel_logits: torch.Tensor, base: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean KL(base || tuned) per scored position of each row, (B,): tuned logits and base log-probabilities
    (B, V, L), targets (B, L) marking the scored positions (IGNORE_INDEX elsewhere)."""
    tuned = F.log_softmax(mel_logits.float(), dim=1)
    kl = (base.exp() * (base - tuned)).sum(dim=1)  # (B, L)
    scored = targets != IGNORE_INDEX
    return (kl * scored).sum(dim=1) / scored.sum(dim=1).clamp(min=1)


def combine(text_ce: torch.Tensor, mel_ce: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Per-clip training loss (B,): text CE x text_weight + mel CE."""
    return text_ce * settings.text_weight + mel_ce


def split_means(values: torch.Tensor, has_tag: torch.Tensor) -> dict[str, tuple[float, int]]:
    """Sums and counts of ``values`` (B,) over all / tagged / untagged clips, for logging."""
    v = values.detach().float()
    out = {"all": (float(v.sum()), int(v.numel()))}
    out["tagged"] = (float(v[has_tag].sum()), int(has_tag.sum()))
    out["untagged"] = (float(v[~has_tag].sum()), int((~has_tag).sum()))
    return out
