"""Semantic-code generation for IndexTTS2 (official ``model_v2.inference_speech``).

IndexTTS2 decodes exactly as 1.x once its prompt is built: the 34-position prefix
``[speaker latents + emotion vector, speed_emb(1), speed_emb(0)]`` takes the place of the 32 latents, so the
1.x prompt, decode loop, sampling and beams are used unchanged, with the same official quirks:

* the KV-cache path feeds the k-th generated code at mel position k+1 (``position_mode="official"``);
  the official no-cache path uses 0, 1, 2, ... (``"train"``);
* the repetition penalty covers HF's fake prompt ids, so codes 1 and start_mel are penalised from step 1.

Official ``infer`` defaults differ from 1.x: temperature 0.8, up to 1500 new codes, and beam sampling as
transformers 4.52 runs it, with beams 1.. starting at -1e9 so that step 1 samples from beam 0 alone
(``official_v2``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tagtune.generation.generate import GenerationConfig, generate_codes

V2_TEMPERATURE = 0.8
V2_MAX_MEL_TOKENS = 1500  # infer_v2's max_mel_tokens default (the model allows max_mel_tokens = 1815)


class V2Codes(NamedTuple):
    codes: torch.Tensor  # (B, T) as the official call returns them: stop_mel included when generated
    lengths: torch.Tensor  # (B,) codes before the first stop_mel
    conds: torch.Tensor  # (B, 32, D) speaker latents (the official call's second return value)


def official_v2(**overrides) -> GenerationConfig:
    """The official IndexTTS2 ``infer`` decoding: beam sampling, 3 beams, top-k 30, top-p 0.8, T 0.8, rep 10."""
    return GenerationConfig(**{"temperature": V2_TEMPERATURE, "max_new_tokens": V2_MAX_MEL_TOKENS,
                               "beam_sample_from_first": True, **overrides})


@torch.no_grad()
def generate_codes_v2(model, spk_cond_emb: torch.Tensor, text_ids: torch.Tensor, emovec: torch.Tensor,
                      cfg: GenerationConfig | None = None, *, spk_lengths: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> V2Codes:
    """Codes for text ids (B, L) from speaker features (1 or B, T, 1024) and an emotion vector (1 or B, D).

    ``spk_lengths`` are the conformer's frame counts; the official pipeline passes the feature width
    (1024), i.e. every frame of a prompt up to 1024 frames is real, which ``None`` reproduces.
    """
    cfg = cfg or official_v2()
    conds = model.get_conditioning(spk_cond_emb, spk_lengths)  # (1 or B, 32, D)
    prefix = model.conditioning_prefix(conds, emovec)  # (1 or B, 34, D)
    codes, lengths = generate_codes(model, text_ids, cfg, conds=prefix, generator=generator)
    return V2Codes(codes, lengths, conds)
