"""Batches for training: a prepared DATA_DIR, global batches bucketed by length, split over processes.

The order of clips is a pure function of (seed, epoch) (the data package's seeded LengthBucketSampler):
a resumed run regenerates the same epoch and skips the batches already consumed. A *global* batch
(batch_size x grad_accum x processes clips) is cut into micro-batches by position, so the clips of an
optimizer step do not depend on the process count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tagtune.errors import UserError
from tagtune.train.loss import Batch
from tagtune.folders import MANIFEST_FILE as MANIFEST, TAGS_FILE as DEFAULT_TAGS, TOKENIZER_FILE as DEFAULT_TOKENIZER



@dataclass
class DataBundle:
    """What training needs from a DATA_DIR."""

    data_dir: Path
    manifest: dict
    manifest_hash: str
    base_dir: Path
    tokenizer_path: Path
    tags_path: Path
    tagset: object  # TagSet: canonical tags in token-id order
    train: object  # PreparedDataset
    val: object

    @property
    def tag_names(self) -> list[str]:
        return list(self.tagset.tags)


def open_data(data_dir: str | Path) -> DataBundle:
    """Open DATA_DIR and resolve the base checkpoint, tokenizer and tags file its manifest names."""
    from tagtune.checkpoint import file_sha256
    from tagtune.data import PreparedDataset
    from tagtune.tags.vocab import TagSet

    data_dir = Path(data_dir)
    train, val = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "val")
    manifest = train.manifest
    tags_path = _manifest_file(data_dir, manifest, "tags_file", DEFAULT_TAGS)
    base = (manifest.get("base_checkpoint") or {}).get("dir")
    if not base:
        raise UserError(f"{data_dir}/manifest.json does not name the base checkpoint folder (base_checkpoint)")
    return DataBundle(
        data_dir=data_dir,
        manifest=manifest,
        manifest_hash=file_sha256(data_dir / MANIFEST)[:16],
        base_dir=(data_dir / base).resolve(),
        tokenizer_path=_manifest_file(data_dir, manifest, "tokenizer", DEFAULT_TOKENIZER),
        tags_path=tags_path,
        tagset=TagSet.load(tags_path),
        train=train,
        val=val,
    )


def _manifest_file(data_dir: Path, manifest: dict, key: str, default: str) -> Path:
    path = data_dir / (manifest.get(key) or default)
    if not path.is_file():
        raise UserError(f"{path}: not found (named by {data_dir}/{MANIFEST})")
    return path


def epoch_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of ``size`` clip indices for one epoch, bucketed by length (incomplete ones dropped)."""
    from tagtune.data import LengthBucketSampler

    sampler = LengthBucketSampler(lengths, size, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return [b for b in sampler.batches() if len(b) == size]


def micro_batch(global_batch: list[int], micro_step: int, rank: int, world: int, batch_size: int) -> list[int]:
    """The clips of ``global_batch`` that process ``rank`` trains on at accumulation step ``micro_step``."""
    start = (micro_step * world + rank) * batch_size
    return global_batch[start : start + batch_size]


def collate(dataset, indices: list[int], pad: PadSpec, conds: dict[int, torch.Tensor] | None = None) -> Batch:
    """Right-padded Batch of ``dataset[i]`` for ``indices``; cached ``conds`` replace the reference mels.

    The official forward keeps ceil(wav_len / 1024) + 1 codes of a clip, which can be one or two more
    than the DVAE produced; codes are padded with stop codes to at least that width, so every clip keeps
    the same positions whichever clips share its batch.
    """
    from tagtune.data import collate as collate_examples

    d = collate_examples([dataset[i] for i in indices], text_pad=pad.stop_text, code_pad=pad.stop_mel)
    kept = (d["wav_lengths"] + pad.compression - 1) // pad.compression + 1  # (B,)
    short = int(kept.max()) - d["codes"].shape[1]
    if short > 0:
        d["codes"] = F.pad(d["codes"], (0, short), value=pad.stop_mel)
    cached = conds is not None and all(i in conds for i in indices)
    return Batch(
        text_ids=d["text_ids"], text_lengths=d["text_lengths"], codes=d["codes"], wav_lengths=d["wav_lengths"],
        cond_mels=None if cached else d["cond_mels"], cond_lengths=None if cached else d["cond_mel_lengths"],
        has_tag=d["has_tag"].bool(), tags=[list(t) for t in d["tags"]],
        conds=torch.stack([conds[i] for i in indices]) if cached else None,
    )


class PadSpec(NamedTuple):
    stop_text: int
    stop_mel: int
    compression: int  # samples per code


def pad_spec(gpt) -> PadSpec:
    """The model's padding values and code rate."""
    return PadSpec(gpt.cfg.stop_text_token, gpt.cfg.stop_mel_token, gpt.cfg.mel_length_compression)


def clip_lengths(dataset) -> list[int]:
    """Sequence length of every clip (text + codes), the bucketing key."""
    return list(dataset.lengths())


@torch.no_grad()
def precompute_conds(gpt, dataset, device, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Speaker latents (32, D) of every clip: constant while the conditioning modules are frozen."""
    out = {}
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        b = collate(dataset, idx, pad_spec(gpt)).to(device)
        latents = gpt.get_conditioning(b.cond_mels, b.cond_lengths, mask_padding=True)  # (B, 32, D), batch-independent
        out.update({i: latents[k].float().cpu() for k, i in enumerate(idx)})
    return out
