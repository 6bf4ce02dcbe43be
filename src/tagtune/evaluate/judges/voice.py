"""Voice judges: is the output still the reference's voice? The cosine of two speaker embeddings.

* ``XVectorVoiceJudge``: a speaker-verification model loaded with ``AutoModelForAudioXVector``
  (default ``microsoft/wavlm-base-plus-sv``);
* ``EcapaVoiceJudge``: the model's own ECAPA-TDNN (the BigVGAN speaker encoder) on the 24 kHz log-mel,
  with no download. It is the encoder that conditions the vocoder, so it is not an independent judge.
* ``CampplusVoiceJudge``: IndexTTS-2's own CAMPPlus (the style that conditions s2mel) on the 16 kHz fbank;
  not independent either, for the same reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from tagtune.audio import SAMPLE_RATE
from tagtune.evaluate.judges.base import Speech, resample_to
from tagtune.evaluate.judges.hub import DEFAULT_SPEAKER_MODEL, load_pretrained

BATCH_CLIPS = 8
ECAPA = "ecapa"  # the --speaker-model value that picks the model's own ECAPA (IndexTTS 1.x)
CAMPPLUS = "campplus"  # ... and IndexTTS-2's own CAMPPlus


class _CosineJudge(ABC):
    """A voice judge is a speaker embedding; the similarity is the cosine of two of them."""

    name: str

    @abstractmethod
    def embed(self, clips: list[Speech]) -> torch.Tensor:
        """(N, D) speaker embeddings of ``clips``."""

    def similarity(self, clips: list[Speech], references: list[Speech]) -> list[float]:
        """Cosine similarity of each clip's speaker embedding with its reference's."""
        a, b = self.embed(clips), self.embed(references)
        return F.cosine_similarity(a, b, dim=-1).tolist()


class XVectorVoiceJudge(_CosineJudge):
    """Speaker embeddings from a transformers x-vector model."""

    def __init__(self, model, extractor, *, device: str = "cpu", batch_size: int = BATCH_CLIPS,
                 progress: bool = False, name: str = DEFAULT_SPEAKER_MODEL):
        self.model, self.extractor = model.to(device).eval(), extractor
        self.device, self.batch_size, self.progress, self.name = device, batch_size, progress, name
        self.rate = int(getattr(extractor, "sampling_rate", 16000))

    @classmethod
    def load(cls, name: str = DEFAULT_SPEAKER_MODEL, **options) -> XVectorVoiceJudge:
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        model = load_pretrained("speaker", name, AutoModelForAudioXVector.from_pretrained)
        extractor = load_pretrained("speaker", name, AutoFeatureExtractor.from_pretrained)
        return cls(model, extractor, name=name, **options)

    def embed(self, clips: list[Speech]) -> torch.Tensor:
        """(N, D) embeddings, ``batch_size`` clips per forward (padding hidden by the attention mask)."""
        from tqdm.auto import tqdm

        rows = []
        starts = range(0, len(clips), self.batch_size)
        for s in tqdm(starts, desc="voice judge", unit="batch", disable=not self.progress):
            audio = [resample_to(c.audio, c.rate, self.rate) for c in clips[s : s + self.batch_size]]
            feats = self.extractor(audio, sampling_rate=self.rate, padding=True, return_attention_mask=True,
                                   return_tensors="pt")
            with torch.inference_mode():
                rows.append(self.model(**{k: v.to(self.device) for k, v in feats.items()}).embeddings.float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 1)


class EcapaVoiceJudge(_CosineJudge):
    """Speaker embeddings from the model's own ECAPA (``vocoder.speaker_embedding`` of the log-mel)."""

    name = ECAPA

    def __init__(self, vocoder, mel):
        self.vocoder, self.mel = vocoder, mel

    @torch.no_grad()
    def embed(self, clips: list[Speech]) -> torch.Tensor:
        device = next(self.vocoder.parameters()).device
        rows = []
        for c in clips:  # one at a time: the ECAPA pooling has no padding mask
            wav = torch.from_numpy(resample_to(c.audio, c.rate, SAMPLE_RATE)).to(device)[None]  # (1, N)
            rows.append(self.vocoder.speaker_embedding(self.mel(wav).transpose(1, 2)).reshape(-1).float().cpu())
        return torch.stack(rows)


class CampplusVoiceJudge(_CosineJudge):
    """Speaker embeddings (the 192-value style) from an IndexTTS-2 folder's CAMPPlus."""

    name = CAMPPLUS

    def __init__(self, campplus):
        self.campplus = campplus

    @torch.no_grad()
    def embed(self, clips: list[Speech]) -> torch.Tensor:
        from tagtune.audio_v2 import W2V_SAMPLE_RATE, campplus_features

        device = next(self.campplus.parameters()).device
        rows = []
        for c in clips:  # one at a time: the fbank has no padding mask
            wav = torch.from_numpy(resample_to(c.audio, c.rate, W2V_SAMPLE_RATE))[None]  # (1, N)
            rows.append(self.campplus(campplus_features(wav).to(device)).reshape(-1).float().cpu())
        return torch.stack(rows)
