"""The real encoders behind the :mod:`tagtune.data.encode` protocols: the tag-aware tokenizer and the
official DVAE + log-mel (IndexTTS-2: w2v-BERT + semantic codec), loaded from a model folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from tagtune.data.encode import DVAEClipEncoder, EncodedText


def _tensor_hash(module: torch.nn.Module) -> str:
    """A short hash of a module's state (identifies the DVAE weights in the data fingerprint)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TokenizerTextEncoder:
    """A :class:`tagtune.text.tokenizer.TextTokenizer` (tag-extended or not) as a ``TextEncoder``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._tag_of_id = {i: tag for tag, i in tokenizer.tag_ids.items()}
        proto = tokenizer.sp.serialized_model_proto()
        tags = sorted(tokenizer.tag_ids.items())
        norm = type(tokenizer.normalizer).__name__ if tokenizer.normalizer is not None else None
        self.identity = "spm:" + hashlib.sha256(proto + repr((tags, norm)).encode()).hexdigest()[:16]

    def __call__(self, text: str) -> EncodedText:
        ids = self.tokenizer.encode(text)
        return EncodedText(
            ids=ids,
            tags=[self._tag_of_id[i] for i in ids if i in self._tag_of_id],
            has_unk=self.tokenizer.unk_token_id in ids,
            normalized=self.tokenizer.preprocess(text),
        )


def dvae_clip_encoder(dvae: torch.nn.Module, mel_config=None, device: torch.device | str | None = None,
                      batch_size: int = 16) -> DVAEClipEncoder:
    """A ``ClipEncoder`` from a loaded DVAE and the dataset's mel settings (official defaults if None)."""
    from tagtune.audio import MelSpectrogram

    mel = MelSpectrogram.from_config(mel_config) if mel_config is not None else MelSpectrogram()
    if device is None:
        from tagtune.devices import best_device

        device = best_device()
    return DVAEClipEncoder(mel, dvae, device, batch_size, identity="dvae:" + _tensor_hash(dvae))


def clip_encoder_from_model(model_dir: str | Path, device: torch.device | str | None = None,
                            batch_size: int = 16):
    """Load ``dvae.pth`` and the mel settings of an official (or tagtune) model folder; for an IndexTTS-2
    folder, its w2v-BERT features and semantic codec (``data.semantic``)."""
    from tagtune.checkpoint import load_dvae, model_family, read_config

    if model_family(model_dir) == "v2":
        from tagtune.data.semantic import semantic_clip_encoder
        from tagtune.loaders import load_model_v2

        return semantic_clip_encoder(load_model_v2(model_dir), device, batch_size)
    cfg = read_config(model_dir)
    return dvae_clip_encoder(load_dvae(model_dir, cfg), cfg.dataset.mel, device, batch_size)
