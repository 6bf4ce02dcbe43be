"""Semantic features of IndexTTS2: w2v-BERT 2.0 hidden states, normalised per channel (official ``get_emb``).

The w2v-BERT model itself is transformers' ``Wav2Vec2BertModel``, built with ``num_hidden_layers`` cut to the
layer IndexTTS2 reads (17 of 24 at full size): ``hidden_states[k]`` is the output of encoder layer k and the
encoder has no norm after its last layer, so the cut model's last hidden state is exactly that output, for
7/24 less work.

Inputs come from ``SeamlessM4TFeatureExtractor`` (Kaldi fbank of 16 kHz audio, two frames stacked per row).
Official quirks that follow from using it as the official code does:

* an odd fbank frame count is padded with the extractor's ``padding_value`` (1 for w2v-bert-2.0) to pair the
  last frame; the attention mask drops that row, but ``forward`` returns it (the GPT and the codec see it);
* in a batch, shorter rows are padded the same way and masked; their padded rows are not zero.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

W2V_SAMPLE_RATE = 16000


class SemanticFeatures(nn.Module):
    """(B, T, 160) stacked fbank rows + (B, T) mask -> (B, T, 1024) normalised w2v-BERT layer-k states."""

    def __init__(self, model: Wav2Vec2BertModel, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)  # (1024,)
        self.register_buffer("std", var.sqrt())  # (1024,)

    @classmethod
    def build(cls, config: Wav2Vec2BertConfig, hidden_layer: int) -> SemanticFeatures:
        """Random-init w2v-BERT cut after ``hidden_layer`` with identity statistics (benchmarks, tests)."""
        cut = copy.deepcopy(config)
        cut.num_hidden_layers = hidden_layer
        width = cut.hidden_size
        return cls(Wav2Vec2BertModel(cut), torch.zeros(width), torch.ones(width))

    @property
    def hidden_layer(self) -> int:
        return self.model.config.num_hidden_layers

    def hidden_state(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Raw output of encoder layer k, (B, T, 1024)."""
        out = self.model(input_features=input_features, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[self.hidden_layer]

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return (self.hidden_state(input_features, attention_mask) - self.mean) / self.std


def extract_inputs(extractor: SeamlessM4TFeatureExtractor, audio_16k) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono 16 kHz audio (a 1-D array/tensor, (1, N), or a list of 1-D ones) -> (input_features (B, T, 160),
    attention_mask (B, T) int64), right-padded to the longest row as the extractor pads."""
    rows = audio_16k if isinstance(audio_16k, list | tuple) else [audio_16k]
    arrays = [np.asarray(torch.as_tensor(a, dtype=torch.float32).reshape(-1)) for a in rows]
    out = extractor(arrays, sampling_rate=W2V_SAMPLE_RATE, return_tensors="pt", padding=True)
    return out["input_features"], out["attention_mask"].long()
