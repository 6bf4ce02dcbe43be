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

The back end every IndexTTS2 speech maker shares (synthesis, and the judges of an evaluation):
``speaker_prompt_v2`` turns prompt audio into what the GPT and s2mel read, ``speech_from_codes`` turns one
segment's final codes into a waveform (latent pass -> gpt_layer + vq2emb -> length regulator -> CFM -> BigVGAN v2).
Both take the opened folder (``loaders.LoadedModelV2``: feature extractor, semantic codec, CAMPPlus, s2mel,
vocoder) and, for the GPT, whichever one speaks (a tuned copy, say).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import torch

from tagtune.audio_v2 import campplus_features, mel_frames_for_codes
from tagtune.generation.generate import GenerationConfig, generate_codes
from tagtune.generation.guidance import Anchor
from tagtune.models.v2.gpt import feature_width_lengths
from tagtune.models.v2.semantic_features import extract_inputs

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


@dataclass(frozen=True)
class AnchorV2:
    """The base IndexTTS-2 GPT that guided decoding starts from (``generation/guidance.py``) and its emotion vector
    (1 or B, D) of the same prompts; its speaker latents come from the same speaker features."""

    gpt: object
    emovec: torch.Tensor


@torch.no_grad()
def generate_codes_v2(model, spk_cond_emb: torch.Tensor, text_ids: torch.Tensor, emovec: torch.Tensor,
                      cfg: GenerationConfig | None = None, *, spk_lengths: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, free_ids: torch.Tensor | None = None,
                      anchor: AnchorV2 | None = None) -> V2Codes:
    """Codes for text ids (B, L) from speaker features (1 or B, T, 1024) and an emotion vector (1 or B, D);
    ``free_ids``: the texts without their tags, for ``cfg.tag_guidance`` and ``anchor``.

    ``spk_lengths`` are the conformer's frame counts; the official pipeline passes the feature width
    (1024), i.e. every frame of a prompt up to 1024 frames is real, which ``None`` reproduces.
    """
    cfg = cfg or official_v2()
    conds = model.get_conditioning(spk_cond_emb, spk_lengths)  # (1 or B, 32, D)
    prefix = model.conditioning_prefix(conds, emovec)  # (1 or B, 34, D)
    base = None
    if anchor is not None:
        base_conds = anchor.gpt.get_conditioning(spk_cond_emb, spk_lengths)
        base = Anchor(anchor.gpt, anchor.gpt.conditioning_prefix(base_conds, anchor.emovec))
    codes, lengths = generate_codes(model, text_ids, cfg, conds=prefix, generator=generator, free_ids=free_ids,
                                    anchor=base)
    return V2Codes(codes, lengths, conds)


@dataclass
class SpeakerPromptV2:
    """What a speaker prompt becomes (all on the model's device, fp32)."""

    spk_cond_emb: torch.Tensor  # (1, T, 1024) normalised w2v-BERT features
    ref_mel: torch.Tensor  # (1, 80, P) s2mel prompt mel
    style: torch.Tensor  # (1, 192) CAMPPlus style
    prompt_condition: torch.Tensor  # (1, P, C) length-regulated semantic embedding of the prompt
    seconds: float


def folder_device(model) -> torch.device:
    """Where the folder's networks run (read off s2mel: asking for ``model.gpt`` would load the folder's GPT)."""
    return next(model.s2mel.parameters()).device


def semantic_features(model, audio_16k: torch.Tensor) -> torch.Tensor:
    """16 kHz audio (1, N) -> normalised w2v-BERT features (1, T, 1024), as the official ``get_emb``."""
    device = folder_device(model)
    feats, mask = extract_inputs(model.feature_extractor, audio_16k)
    return model.semantic_features(feats.to(device), mask.to(device))


def prompt_emovec(gpt, spk_cond_emb: torch.Tensor, emo_cond_emb: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The GPT's emotion vector (1, D) of speaker and emotion prompt features (1, T, 1024) blended by ``alpha``
    (``merge_emovec``, with the feature-width lengths the official pipeline passes)."""
    return gpt.merge_emovec(spk_cond_emb, emo_cond_emb, feature_width_lengths(spk_cond_emb),
                            feature_width_lengths(emo_cond_emb), alpha)


@torch.no_grad()
def speaker_prompt_v2(model, audio_22k: torch.Tensor, audio_16k: torch.Tensor, sample_rate: int) -> SpeakerPromptV2:
    """The speaker prompt of audio at s2mel's rate ``sample_rate`` (1, N) and at 16 kHz (1, M)."""
    device = folder_device(model)
    audio_22k, audio_16k = audio_22k.to(device), audio_16k.to(device)
    spk_cond_emb = semantic_features(model, audio_16k)  # (1, T, 1024)
    _, s_ref = model.semantic_codec.quantize(spk_cond_emb)  # (1, T, 1024)
    ref_mel = model.prompt_mel(audio_22k)  # (1, 80, P)
    style = model.campplus(campplus_features(audio_16k.cpu()).to(device))  # (1, 192)
    frames = torch.tensor([ref_mel.shape[-1]], device=device)
    prompt_condition = model.s2mel.content(s_ref, frames)  # (1, P, C)
    return SpeakerPromptV2(spk_cond_emb, ref_mel, style, prompt_condition, audio_22k.shape[-1] / sample_rate)


@torch.no_grad()
def speech_from_codes(model, gpt, speaker: SpeakerPromptV2, emovec: torch.Tensor, ids: list[int],
                      codes: torch.Tensor, conds: torch.Tensor, noise, timings: dict | None = None) -> torch.Tensor:
    """One segment's final codes (1, N), N > 0, its text ``ids`` and speaker latents ``conds`` (1, 32, D) ->
    wav (1, samples) in [-1, 1] from ``gpt``'s latents and the folder's s2mel and vocoder. ``noise(frames)``
    gives the CFM's starting noise (1, channels, frames) for the prompt's frames plus the segment's. Seconds per
    stage are added to ``timings`` when given."""
    device = gpt.mel_head.weight.device
    t1 = time.perf_counter()
    text_ids = torch.tensor([ids], dtype=torch.int32, device=device)
    lengths = torch.tensor([codes.shape[1]], device=device)
    latent = gpt(conds, emovec, text_ids, torch.tensor([len(ids)], device=device), codes, lengths)
    t2 = time.perf_counter()
    semantic = model.s2mel.semantic(model.semantic_codec.vq2emb(codes), latent)  # (1, N, 1024)
    condition = model.s2mel.content(semantic, mel_frames_for_codes(lengths))  # (1, frames, C)
    frames = speaker.prompt_condition.shape[1] + condition.shape[1]
    mel = model.s2mel.generate(speaker.prompt_condition, condition, speaker.ref_mel, speaker.style, noise(frames))
    t3 = time.perf_counter()
    wav = model.vocoder(mel)[:, 0]  # (1, frames * 256)
    if timings is not None:
        for stage, seconds in (("latents", t2 - t1), ("s2mel", t3 - t2), ("vocoder", time.perf_counter() - t3)):
            timings[stage] = timings.get(stage, 0.0) + seconds
    return wav

