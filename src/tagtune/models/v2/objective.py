"""The IndexTTS-2 objective: prepared v2 items -> batches -> per-clip text and semantic-code cross-entropy.

The GPT reads ``[speaker latents + emotion vector (32), speed_emb(1), speed_emb(0)]`` (the 34-position prefix of
``UnifiedVoiceV2.conditioning_prefix``), then the text, then the codes, exactly as at inference. The speaker
latents come from another clip of the same speaker, the emotion vector from the clip ``prepare`` chose (never a
tagged target itself); both conformers run with true lengths and ``mask_padding``, so a clip's loss does not
depend on the clips that share its batch. ``conditioning_prefix_inputs`` computes them once for frozen
conditioning branches (the default), as ``train.data.precompute_conds`` does for 1.x.

It lives with the model, below the stages: the training loop (``train.family.FamilyV2`` hands these to the loop it
shares with 1.x) and the tiny v2 base's pre-training (``tiny.v2.pretrain``) both use it. Items are dicts in the
layout of ``data.dataset.PreparedDatasetV2``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from tagtune.audio import event_onset_codes
from tagtune.models.contrast import ContrastRows, contrast_penalty
from tagtune.models.unified_voice import COND_LATENTS, onset_weights, position_ce, row_ce, row_mean
from tagtune.models.v2.gpt import SPEED_ROWS

PREFIX_POSITIONS = COND_LATENTS + SPEED_ROWS  # speaker latents + emotion vector (32), speed_emb(1), speed_emb(0)


@dataclass
class BatchV2:
    """A collated IndexTTS-2 micro-batch (right-padded)."""

    text_ids: torch.Tensor  # (B, Lt)
    text_lengths: torch.Tensor  # (B,)
    codes: torch.Tensor  # (B, Lc) semantic codes
    code_lengths: torch.Tensor  # (B,) codes kept
    spk_features: torch.Tensor | None  # (B, T, 1024) speaker clip's w2v-BERT states, zero-padded
    spk_lengths: torch.Tensor | None  # (B,)
    emo_features: torch.Tensor | None  # (B, T', 1024) emotion clip's states
    emo_lengths: torch.Tensor | None  # (B,)
    has_tag: torch.Tensor  # (B,) bool
    tags: list[list[str]]
    conds: torch.Tensor | None = None  # (B, 32, D) precomputed speaker latents
    emovec: torch.Tensor | None = None  # (B, D) precomputed emotion vectors
    onsets: list[list[int]] | None = None  # per row, the first code of each tagged event (loss.onset_weight)
    contrast: ContrastRows | None = None  # contrast texts of tagged rows (loss.tag_contrast, train.contrast)

    def to(self, device) -> BatchV2:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor | ContrastRows) else t  # noqa: E731
        return BatchV2(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def real_positions(self) -> int:
        """Positions that belong to a clip: its 34-position prefix, text + 2 and codes + 2 (logged as speed)."""
        return int((PREFIX_POSITIONS + self.text_lengths + 2 + self.code_lengths + 2).sum())


def _pad(seqs: list[torch.Tensor], value: float) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def collate_v2(items: list[dict], gpt_cfg, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
               keys: list[int] | None = None) -> BatchV2:
    """Items of ``PreparedDatasetV2`` -> a BatchV2; text padded with the stop text token, codes with the stop
    code (the forward turns padding into them anyway). With ``prefix`` (key -> (conds (32, D), emovec (D,)) from
    ``conditioning_prefix_inputs``) the features are not batched; ``keys`` are the items' keys in it (default
    their example ids)."""
    cached = prefix is not None
    keys = [b["id"] for b in items] if keys is None else keys
    spk = [b["spk_features"] for b in items]
    emo = [b["emo_features"] for b in items]
    return BatchV2(
        text_ids=_pad([b["text_ids"] for b in items], gpt_cfg.stop_text_token),
        text_lengths=torch.tensor([len(b["text_ids"]) for b in items]),
        codes=_pad([b["codes"] for b in items], gpt_cfg.stop_mel_token),
        code_lengths=torch.tensor([len(b["codes"]) for b in items]),
        spk_features=None if cached else _pad(spk, 0.0),
        spk_lengths=None if cached else torch.tensor([s.shape[0] for s in spk]),
        emo_features=None if cached else _pad(emo, 0.0),
        emo_lengths=None if cached else torch.tensor([s.shape[0] for s in emo]),
        has_tag=torch.tensor([b["has_tag"] for b in items]),
        tags=[b["tags"] for b in items],
        conds=torch.stack([prefix[k][0] for k in keys]) if cached else None,
        emovec=torch.stack([prefix[k][1] for k in keys]) if cached else None,
        onsets=[event_onset_codes(b.get("events"), bool(b["has_tag"]), b["samples_per_code"])
                if "samples_per_code" in b else [] for b in items],
    )


def prefix_inputs(gpt: nn.Module, batch: BatchV2) -> tuple[torch.Tensor, torch.Tensor]:
    """(speaker latents (B, 32, D), emotion vectors (B, D)) of a batch: precomputed, or run here on the
    features with true lengths and padding masked (each row as its clip alone)."""
    if batch.conds is not None and batch.emovec is not None:
        return batch.conds, batch.emovec
    conds = gpt.get_conditioning(batch.spk_features, batch.spk_lengths, mask_padding=True)
    emovec = gpt.get_emovec(batch.emo_features, batch.emo_lengths, mask_padding=True)
    return conds, emovec


class RowLossesV2(nn.Module):
    """``forward(batch) -> (text CE (B,), code CE (B,))`` for each clip, the v2 peer of ``train.loss.RowLosses``
    (an ``nn.Module`` so that DDP can wrap it); ``train.loss.combine`` weighs the two as for 1.x."""

    def __init__(self, gpt: nn.Module, mask_padding: bool = True, onset_weight: float = 1.0, onset_codes: int = 2,
                 tag_contrast: float = 0.0, contrast_margin: float = 3.0):
        super().__init__()
        self.gpt, self.mask_padding = gpt, mask_padding
        self.onset_weight, self.onset_codes = onset_weight, onset_codes
        self.tag_contrast, self.contrast_margin = tag_contrast, contrast_margin

    def forward(self, batch: BatchV2) -> tuple[torch.Tensor, torch.Tensor]:
        conds, emovec = prefix_inputs(self.gpt, batch)
        out = self.gpt.logits(conds, emovec, batch.text_ids, batch.text_lengths, batch.codes, batch.code_lengths,
                              mask_padding=self.mask_padding, mask_loss=self.mask_padding)
        weights = onset_weights(out.mel_targets.shape, batch.onsets, self.onset_weight, self.onset_codes)
        code_ce = position_ce(out.mel_logits, out.mel_targets)  # (B, L), the contrast term reads it too
        mel = row_mean(code_ce, out.mel_targets, weights)
        if self.tag_contrast and batch.contrast is not None:
            c = batch.contrast
            other = self.gpt.logits(conds[c.rows], emovec[c.rows], c.text_ids, c.text_lengths, batch.codes[c.rows],
                                    batch.code_lengths[c.rows], mask_padding=self.mask_padding,
                                    mask_loss=self.mask_padding)
            mel = mel + contrast_penalty(code_ce,
                                         position_ce(other.mel_logits, other.mel_targets), c, self.tag_contrast,
                                         self.contrast_margin, len(mel))
        return row_ce(out.text_logits, out.text_targets), mel


@torch.no_grad()
def conditioning_prefix_inputs(gpt: nn.Module, dataset, device="cpu", batch_size: int = 16,
                               by_index: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Example id (dataset index with ``by_index``) -> (speaker latents (32, D), emotion vector (D,)) on the CPU,
    for frozen conditioning branches; ``dataset`` is indexable (``PreparedDatasetV2``, a list of its items).

    Batch-independent (true lengths, padding masked), so they equal what ``RowLossesV2`` computes per batch.
    Ids are unique within one folder only: a dataset mixing folders (``train.data.ReplayMix``) is keyed by index.
    """
    out = {}
    for s in range(0, len(dataset), batch_size):
        indices = range(s, min(len(dataset), s + batch_size))
        items = [dataset[i] for i in indices]
        batch = collate_v2(items, gpt.cfg).to(device)
        conds, emovec = prefix_inputs(gpt, batch)
        for row, (i, item) in enumerate(zip(indices, items)):
            out[i if by_index else item["id"]] = (conds[row].cpu(), emovec[row].cpu())
    return out
