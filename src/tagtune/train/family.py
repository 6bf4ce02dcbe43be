"""What the training loop asks of a model family: batches, per-clip losses and the frozen conditioning cache.

The loop (``train.loop``) is the same for IndexTTS 1.x and IndexTTS-2; the few things that differ live in one
small object per family, picked from the data folder's ``model_family``:

* ``prefix_cache(gpt, dataset, device, trained)``: what the frozen conditioning branches give each clip, computed
  once (1.x: speaker latents; IndexTTS-2: speaker latents and emotion vector), by dataset index; when the
  conditioning trains, what its frozen input subsampling gives (1.x: reference frames; IndexTTS-2: nothing);
* ``collate(dataset, indices, gpt, cache, contrast, epoch)``: a micro-batch of those clips (with the contrast
  texts of ``contrast``, a ``train.contrast.TagContrast``, for that epoch);
* ``losses(gpt, settings[, base_kl])``: the ``nn.Module`` giving (text CE (B,), code CE (B,)), which DDP wraps
  (``base_kl``: 1.x only, train/base_kl.py);
* ``neutral_prefix(gpt, dataset, picks, cache, device)``: the conditioning of the clips the neutral tag-row
  fit reads, in the form ``tags.neutral.fit_neutral_row`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tagtune.models.v2.objective import RowLossesV2, collate_v2, conditioning_prefix_inputs
from tagtune.train.config import LossSettings
from tagtune.train.contrast import TagContrast
from tagtune.train.data import (
    V2,
    ReferenceFrames,
    collate,
    conds_from_frames,
    pad_spec,
    precompute_conds,
    precompute_frames,
)
from tagtune.train.loss import RowLosses


@dataclass(frozen=True)
class FamilyV1:
    """IndexTTS 1.x: DVAE codes after 32 speaker latents read from a reference log-mel."""

    name: str = "v1"

    def prefix_cache(self, gpt: nn.Module, dataset, device, trained: bool = False) -> dict | None:
        return precompute_frames(gpt, dataset, device) if trained else precompute_conds(gpt, dataset, device)

    def collate(self, dataset, indices: list[int], gpt: nn.Module, cache: dict | None,
                contrast: TagContrast | None = None, epoch: int = 0):
        items = [dataset[i] for i in indices]
        batch = collate(dataset, indices, pad_spec(gpt), cache, items)
        batch.contrast = contrast.rows(items, indices, epoch) if contrast is not None else None
        return batch

    def losses(self, gpt: nn.Module, settings: LossSettings, base_kl: float = 0.0) -> nn.Module:
        return RowLosses(gpt, settings, base_kl)

    def neutral_prefix(self, gpt: nn.Module, dataset, picks: list[int], cache: dict | None, device) -> list:
        """Speaker latents (32, D) of ``dataset[i]`` for ``picks``: cached, or computed here (from the cached
        reference frames where there are some) when training the conditioning."""
        if isinstance(cache, ReferenceFrames):
            return conds_from_frames(gpt, cache, picks, device)
        if cache is not None:
            return [cache[i] for i in picks]
        fresh = precompute_conds(gpt, [dataset[i] for i in picks], device)
        return [fresh[k] for k in range(len(picks))]


@dataclass(frozen=True)
class FamilyV2:
    """IndexTTS-2: semantic codes after the 34-position prefix (speaker latents + emotion vector, speed rows)."""

    name: str = V2

    def prefix_cache(self, gpt: nn.Module, dataset, device, trained: bool = False) -> dict | None:
        return None if trained else conditioning_prefix_inputs(gpt, dataset, device, by_index=True)

    def collate(self, dataset, indices: list[int], gpt: nn.Module, cache: dict | None,
                contrast: TagContrast | None = None, epoch: int = 0):
        items = [dataset[i] for i in indices]
        batch = collate_v2(items, gpt.cfg, cache, keys=indices)
        batch.contrast = contrast.rows(items, indices, epoch) if contrast is not None else None
        return batch

    def losses(self, gpt: nn.Module, settings: LossSettings) -> nn.Module:
        return RowLossesV2(gpt, settings.mask_padding, settings.onset_weight, settings.onset_codes,
                           settings.tag_contrast, settings.contrast_margin)

    def neutral_prefix(self, gpt: nn.Module, dataset, picks: list[int], cache: dict | None, device) -> list:
        """(speaker latents (32, D), emotion vector (D,)) of ``dataset[i]`` for ``picks``: cached, or computed here
        when training the conditioning."""
        if cache is not None:
            return [cache[i] for i in picks]
        fresh = conditioning_prefix_inputs(gpt, [dataset[i] for i in picks], device, by_index=True)
        return [fresh[k] for k in range(len(picks))]


FAMILIES = {"v1": FamilyV1(), V2: FamilyV2()}


def family_of(data) -> FamilyV1 | FamilyV2:
    """The training family of an opened DATA_DIR (``train.data.open_data``)."""
    return FAMILIES[data.family]
