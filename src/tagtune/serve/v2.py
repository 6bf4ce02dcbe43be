"""Serving IndexTTS-2: the decode steps batched like 1.x, the back end run per finished segment.

Design. IndexTTS-2 decodes exactly as 1.x once its prompt is built (``generation.v2``: the 34-position prefix
``[speaker latents + emotion vector, speed rows]`` in place of the 32 latents), so a v2 request joins its lane's
``DecodePool`` like any other and its steps are batched with every running request of that lane. What differs
is after the codes: the back end (the GPT latent pass, s2mel's 25 flow-matching steps and BigVGAN v2) needs a
segment's codes whole, so it runs once per finished segment, through ``TTSV2.segment_audio`` (the very code
``TTSV2.synthesize`` runs), and the audio is sent a segment at a time rather than in vocoder windows.
Segments are decoded one at a time in text order, as ``TTSV2.synthesize`` decodes them, and the flow-matching
noise is drawn from the request's generator right after its segment's codes, so a seeded request gives the
audio the Python API gives (``TTS.load(base, adapter).synthesize(..., seed=...)``).

Emotion follows ``TTSV2.synthesize``: a request's emotion settings (an emotion reference and its alpha, eight
weights, or an emotion description for QwenEmotion) become its emotion vector through ``TTSV2.emotion_choice``,
the code ``synthesize`` runs; without them the speaker reference is also the emotion reference (alpha 1), the
official default.
"""

from __future__ import annotations

import numpy as np
import torch

from tagtune.models.v2.gpt import feature_width_lengths


class SegmentSpeech:
    """One request's audio, a segment at a time: ``update`` (as ``SpeechStream.update``) returns the int16
    chunks of a segment once its codes are final (a silent gap first, between segments)."""

    def __init__(self, tts, speaker, conds: torch.Tensor, emovec: torch.Tensor, sentences: list[list[int]],
                 generator: torch.Generator | None):
        self.tts, self.speaker, self.conds, self.emovec = tts, speaker, conds, emovec
        self.sentences, self.generator = sentences, generator
        self.done = [False] * len(sentences)
        self.spoken = False  # a segment has been sent: the next one starts with the interval silence
        self.gap = np.zeros(int(tts.sample_rate * tts.interval_silence_ms / 1000.0), dtype=np.int16)

    def update(self, index: int, codes: list[int], finished: bool) -> list[np.ndarray]:
        if not finished or self.done[index]:
            return []
        self.done[index] = True
        if not codes:  # TTSV2 skips such a segment, silence and all
            return []
        device = self.conds.device
        ids = torch.tensor([codes], dtype=torch.long, device=device)  # (1, N)
        wav = self.tts.segment_audio(self.speaker, self.emovec, self.sentences[index], ids, self.conds,
                                     self.generator)  # (1, samples) float in int16 range
        out = [self.gap] if self.spoken else []
        self.spoken = True
        return [*out, wav[0].cpu().to(torch.int16).numpy()]  # the int16 cast truncates, as TTSV2._join


@torch.no_grad()
def start_v2(tts, base_tts, voice, sentences: list[list[int]], generator: torch.Generator | None,
             text: str = "", emotion: dict | None = None, anchored: bool = False):
    """A request's decode prefix (1, 34, D), its SegmentSpeech and, when ``anchored``, the base's own prefix for
    the same prompts (as ``generation.v2.generate_codes_v2`` builds the anchor's; else None). ``tts`` is the lane's
    TTSV2 (its adapter active), ``base_tts`` the base lane's, whose prompt caches and QwenEmotion every lane
    shares (prompts and emotion weights do not depend on the GPT). ``emotion`` holds ``TTSV2.synthesize``'s
    emotion keywords (``emotion``, ``emo_alpha``, ``emo_vector``, ``emo_text``) and ``text`` is the request's
    input (what an empty ``emo_text`` describes). Raises ReferenceAudioError for an unusable reference,
    EmotionError for an unusable emotion setting."""
    speaker = base_tts.speaker(voice)
    source, alpha, weights = base_tts.emotion_choice(text, voice, **(emotion or {}))
    features = base_tts.emotion_features(source)
    spk, lengths = speaker.spk_cond_emb, feature_width_lengths(speaker.spk_cond_emb)

    def prefix(model):
        emovec = model.emotion_vector(speaker, features, alpha, weights)  # (1, D)
        conds = model.gpt.get_conditioning(spk, lengths)  # (1, 32, D)
        return conds, emovec, model.gpt.conditioning_prefix(conds, emovec)  # prefix (1, 34, D)

    conds, emovec, own = prefix(tts)
    anchor = prefix(base_tts)[2] if anchored else None
    return own, SegmentSpeech(tts, speaker, conds, emovec, sentences, generator), anchor
