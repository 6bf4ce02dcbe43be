"""The IndexTTS-2 clip encoder of preparation: waveform -> w2v-BERT features + semantic codes.

IndexTTS2's GPT predicts semantic codes, 50 per second: the w2v-BERT 2.0 hidden state of the layer it reads
(the model is built cut after that layer), normalised by the folder's statistics, quantised by the MaskGCT
semantic codec. Each clip is read as a speaker prompt is (``audio_v2``): the prepared 24 kHz waveform taken to
22.05 kHz by soxr and on to 16 kHz by windowed-sinc resampling. The same normalised features are kept (cropped)
as the clip's conditioning input: training feeds another clip's features to the speaker conformer and an
untagged clip's to the emotion conformer.

Batches are right-padded with the feature extractor's attention mask: w2v-BERT gives every real row the
numbers it gives the clip alone, up to fp32 rounding of the batched matmuls (the codes agree exactly; checked on
the tiny v2 fixture). The codec's convolutions would mix padding into the last rows, so it runs on each clip
alone. Only real rows are kept: the row the extractor pads an odd frame count with holds no audio.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from tagtune.audio import SAMPLE_RATE, resample
from tagtune.audio_v2 import S2MEL_SAMPLE_RATE, W2V_SAMPLE_RATE, soxr_resample

FEATURE_RATE = 50  # w2v-BERT rows (and semantic codes) per second of audio
FEATURE_PATH = "speaker path: soxr 24 kHz -> 22.05 kHz, sinc -> 16 kHz"  # recorded in the manifest


def speaker_path_16k(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A prepared waveform (N,) taken to 16 kHz as a speaker prompt is: (1, M) float32."""
    at_22k = torch.from_numpy(soxr_resample(np.ascontiguousarray(wav, dtype=np.float32), sample_rate,
                                            S2MEL_SAMPLE_RATE).copy())[None]
    return resample(at_22k, S2MEL_SAMPLE_RATE, W2V_SAMPLE_RATE)


class SemanticClipEncoder:
    """A ``ClipEncoder`` for IndexTTS-2: 24 kHz waveforms -> (features (1024, T) float32, codes (T,) int64).

    ``extractor`` is the SeamlessM4T feature extractor, ``features`` a ``SemanticFeatures`` module and ``codec``
    a ``RepCodec`` (all from ``loaders.LoadedModelV2``). Clips are sorted by length and batched.
    """

    cond_name = "features"  # what the shards store the conditioning input as (``data.shards.FEATURES``)

    def __init__(self, extractor, features: torch.nn.Module, codec: torch.nn.Module,
                 device: torch.device | str = "cpu", batch_size: int = 8, identity: str = "semantic"):
        self.extractor, self.batch_size, self.identity = extractor, batch_size, identity
        self.device = torch.device(device)
        self.features = features.to(self.device).eval()
        self.codec = codec.to(self.device).eval()

    @staticmethod
    def cond_frames(seconds: float | None) -> int | None:
        """Feature rows kept of each clip for ``seconds`` of conditioning (None: all)."""
        return None if seconds is None else int(math.floor(seconds * FEATURE_RATE))

    @torch.no_grad()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Features and codes for each waveform, in input order."""
        from tagtune.models.v2.semantic_features import extract_inputs

        audio = [speaker_path_16k(w)[0] for w in wavs]
        order = sorted(range(len(audio)), key=lambda i: audio[i].shape[-1])
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(audio)
        for s in range(0, len(order), self.batch_size):
            part = order[s : s + self.batch_size]
            feats, mask = extract_inputs(self.extractor, [audio[i] for i in part])  # (B, T, 160), (B, T)
            states = self.features(feats.to(self.device), mask.to(self.device))  # (B, T, 1024)
            for row, i in enumerate(part):
                real = states[row, : int(mask[row].sum())][None]  # (1, T_i, 1024)
                codes, _ = self.codec.quantize(real)  # (1, T_i)
                out[i] = (real[0].T.float().cpu(), codes[0].long().cpu())
        return out


def semantic_clip_encoder(model, device: torch.device | str | None = None, batch_size: int = 8):
    """A ``SemanticClipEncoder`` from a ``loaders.LoadedModelV2``; its identity hashes the folder's statistics,
    the w2v-BERT layer, the codec and the feature path, so data of another model is never mixed in."""
    if device is None:
        from tagtune.devices import best_device

        device = best_device()
    h = hashlib.sha256(FEATURE_PATH.encode())
    for module in (model.semantic_features, model.semantic_codec):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return SemanticClipEncoder(model.feature_extractor, model.semantic_features, model.semantic_codec, device,
                               batch_size, identity="semantic:" + h.hexdigest()[:16])
