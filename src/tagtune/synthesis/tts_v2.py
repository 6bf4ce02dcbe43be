"""IndexTTS2 synthesis: text + speaker prompt (+ emotion prompt, emotion vector or emotion text) -> 22.05 kHz.

The official ``IndexTTS2.infer`` pipeline, one text segment at a time:

    speaker prompt  -> w2v-BERT features -> speaker latents (GPT), semantic codes (codec) -> prompt condition
                    -> prompt mel (s2mel), CAMPPlus style
    emotion         -> emotion prompt features -> emotion vector, blended with the speaker's by ``emo_alpha``;
                       or an 8-value emotion vector mixing rows of the emotion matrices
    each segment    -> GPT codes -> GPT latents -> gpt_layer + vq2emb -> length regulator -> CFM (25 steps)
                    -> BigVGAN v2 -> int16 (truncated), segments joined with 200 ms of silence

``compat="official"`` decodes exactly as the official ``infer`` does (sampling always on, as ``infer`` forces
it; KV-cache mel positions; fp32) and draws each segment's flow-matching noise right after seeding with the
synthesis seed, as the parity fixture does before every ``CFM.inference``; with ``top_k=1`` and seed 1234 it
reproduces the fixture's end-to-end PCM. Otherwise the given decoding settings are used as they are, the GPT
decode runs in ``precision`` (``synthesis.fast_gpt``; the latent pass stays fp32) and the noise of all segments
comes from one generator seeded once.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tagtune.audio_v2 import S2MEL_SAMPLE_RATE, emotion_prompt, speaker_prompt
from tagtune.config import EMOTION_GROUPS
from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.generation.generate import code_lengths
from tagtune.generation.v2 import (
    AnchorV2,
    SpeakerPromptV2,
    generate_codes_v2,
    official_v2,
    prompt_emovec,
    semantic_features,
    speaker_prompt_v2,
    speech_from_codes,
)
from tagtune.models.v2.gpt import (
    blend_emotion_vector,
    emotion_matrix_vector,
    emotion_rows,
    feature_width_lengths,
    scale_emotion_weights,
)
from tagtune.models.v2.s2mel import seeded_noise
from tagtune.precision import resolve_precision
from tagtune.synthesis.reference import ReferenceAudioError, reference_key
from tagtune.synthesis.tts import (
    COMPAT_MODES,
    MAX_TEXT_CHARS,
    PCM_SCALE,
    Synthesis,
    TextError,
    _preview,
    check_guidance,
    check_seed,
)

log = logging.getLogger(__name__)

MAX_SEGMENT_TOKENS = 120  # infer_v2's max_text_tokens_per_segment default
INTERVAL_SILENCE_MS = 200  # silence between segments
EMOTION_NAMES = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
CACHE_SIZE = 16


class EmotionError(UserError, ValueError):
    """An emotion setting that cannot be used (vector length, weights, alpha, a missing QwenEmotion model)."""


def check_emotion_vector(weights) -> list[float]:
    """Eight non-negative numbers (happy, angry, sad, afraid, disgusted, melancholic, surprised, calm)."""
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise EmotionError(f"the emotion vector must be {EMOTION_GROUPS} numbers, got {weights!r}",
                           params=("emo_vector",)) from None
    if len(values) != EMOTION_GROUPS:
        raise EmotionError(f"the emotion vector needs {EMOTION_GROUPS} values ({', '.join(EMOTION_NAMES)}), "
                           f"got {len(values)}", params=("emo_vector",))
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise EmotionError(f"emotion weights must be finite and >= 0, got {values}", params=("emo_vector",))
    return values


def check_emotion_alpha(emo_alpha) -> float:
    """The strength of an emotion reference or vector: a number in [0, 1]."""
    try:
        alpha = float(emo_alpha)
    except (TypeError, ValueError):
        raise EmotionError(f"emo_alpha must be a number in [0, 1], got {emo_alpha!r}", params=("emo_alpha",)) from None
    if not np.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise EmotionError(f"emo_alpha must be in [0, 1], got {emo_alpha}", params=("emo_alpha",))
    return alpha


def parse_emotion_vector(text: str) -> list[float]:
    """``"0,0,0.3,0,0,0,0.2,0"`` -> eight weights (checked)."""
    return check_emotion_vector([p for p in text.replace(" ", ",").split(",") if p])


def _as_prompt_source(source):
    """Paths and file bytes pass through; ``(rate, samples)`` from a web form becomes wav bytes."""
    if not isinstance(source, tuple):
        return source
    import soundfile as sf

    rate, samples = source
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.signedinteger):
        x = x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    buf = io.BytesIO()
    try:
        sf.write(buf, x.astype(np.float32), int(rate), format="WAV", subtype="FLOAT")
    except (ValueError, TypeError, RuntimeError) as e:
        raise ReferenceAudioError(f"reference audio (recording): cannot be used ({e})") from None
    return buf.getvalue()


class TTSV2:
    """Text-to-speech with an IndexTTS-2 folder (a ``loaders.LoadedModelV2``); ``TTS.load`` returns one for
    such a folder. Prompts are cached by content, as the official object caches its last prompt."""

    sample_rate = S2MEL_SAMPLE_RATE

    def __init__(self, model, *, name: str = "model", precision: str = "fp32", max_text_chars: int = MAX_TEXT_CHARS,
                 max_segment_tokens: int = MAX_SEGMENT_TOKENS, interval_silence_ms: int = INTERVAL_SILENCE_MS,
                 anchor=None):
        self.model, self.name, self.anchor = model, name, anchor  # anchor: the base's fp32 GPT, as for ``TTS``
        self.gpt = model.gpt
        self.tokenizer = model.tokenizer
        self.device = self.gpt.mel_head.weight.device
        self.precision = resolve_precision(precision, self.device)
        self._fast_gpt = None
        self._fast_anchor = None
        self.max_text_chars = max_text_chars
        self.max_sentence_tokens = min(max_segment_tokens, self.gpt.cfg.max_text_tokens)
        self.interval_silence_ms = interval_silence_ms
        self._speakers: dict[str, SpeakerPromptV2] = {}
        self._emotions: dict[str, torch.Tensor] = {}
        self._qwen = None

    @property
    def fast_gpt(self):
        """The GPT the default path decodes with (a reduced-precision copy unless fp32), built on first use."""
        if self._fast_gpt is None:
            from tagtune.synthesis.fast_gpt import prepare_gpt

            self._fast_gpt = self.gpt if self.precision == "fp32" else prepare_gpt(self.gpt, self.precision)
        return self._fast_gpt

    def anchor_of(self, emovec: torch.Tensor | None) -> AnchorV2 | None:
        """The ``AnchorV2`` (the base GPT the default path decodes in, with its emotion vector ``emovec``), or None
        when this model decodes alone."""
        if self.anchor is None:
            return None
        if self._fast_anchor is None:
            from tagtune.synthesis.fast_gpt import prepare_gpt

            self._fast_anchor = self.anchor if self.precision == "fp32" else prepare_gpt(self.anchor, self.precision)
        return AnchorV2(self._fast_anchor, emovec)

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "cpu", unknown_tags: str = "error", **options) -> TTSV2:
        from tagtune.loaders import load_model_v2

        m = load_model_v2(model_dir, device=device, unknown_tags=unknown_tags)
        m.check_vocabulary()
        return cls(m, name=str(model_dir), **options)

    @staticmethod
    def default_generation() -> GenerationConfig:
        """The official IndexTTS2 decoding (beam sampling, T 0.8, top-k 30, top-p 0.8, repetition penalty 10)."""
        return official_v2()

    @property
    def known_tags(self) -> list[str]:
        return list(self.tokenizer.tag_ids)

    # ------------------------------------------------------------------------------------------ text

    def sentences(self, text: str, max_sentence_tokens: int | None = None) -> list[list[int]]:
        """Text -> GPT segments (ids) by the official IndexTTS2 segment rules; tags stay whole."""
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text is empty", params=("text",))
        if len(text) > self.max_text_chars:
            raise TextError(f"the text has {len(text)} characters; the limit is {self.max_text_chars}: split it "
                            "into shorter texts", params=("text",))
        limit = self.max_sentence_tokens
        if max_sentence_tokens is not None:
            if max_sentence_tokens < 1:
                raise TextError(f"max_sentence_tokens must be >= 1, got {max_sentence_tokens}")
            limit = min(int(max_sentence_tokens), self.gpt.cfg.max_text_tokens)
        pieces = self.tokenizer.tokenize(text)
        ids = [s for s in (self.tokenizer.convert_tokens_to_ids(c)
                           for c in self.tokenizer.split_segments(pieces, limit)) if s]
        if not ids:
            raise TextError(f"nothing to say in {_preview(text)} after normalisation", params=("text",))
        return ids

    # --------------------------------------------------------------------------------------- prompts

    def features(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """16 kHz audio (1, N) -> normalised w2v-BERT features (1, T, 1024), as the official ``get_emb``."""
        return semantic_features(self.model, audio_16k)

    @torch.no_grad()
    def speaker(self, source) -> SpeakerPromptV2:
        """The speaker prompt of a path, file bytes or (rate, samples); computed once per content."""
        if isinstance(source, SpeakerPromptV2):
            return source
        key = reference_key(source)
        if key not in self._speakers:
            _bounded(self._speakers)
            prompt = _read_prompt(lambda: speaker_prompt(_as_prompt_source(source)), source)
            self._speakers[key] = speaker_prompt_v2(self.model, prompt.audio_22k, prompt.audio_16k, S2MEL_SAMPLE_RATE)
        return self._speakers[key]

    @torch.no_grad()
    def emotion_features(self, source) -> torch.Tensor:
        """Features (1, T, 1024) of an emotion prompt, read straight at 16 kHz (the official emotion path)."""
        key = reference_key(source)
        if key not in self._emotions:
            _bounded(self._emotions)
            audio = _read_prompt(lambda: emotion_prompt(_as_prompt_source(source)), source)
            self._emotions[key] = self.features(audio.to(self.device))
        return self._emotions[key]

    @torch.no_grad()
    def emotion_vector(self, speaker: SpeakerPromptV2, emo_cond_emb: torch.Tensor, emo_alpha: float = 1.0,
                       weights: list[float] | None = None, gpt=None) -> torch.Tensor:
        """The GPT's emotion vector (1, D): the prompt blend ``merge_emovec``, mixed with the emotion-matrix
        rows nearest the speaker's style when 8 ``weights`` are given. ``gpt``: another GPT's (the anchor's)."""
        merged = prompt_emovec(gpt or self.gpt, speaker.spk_cond_emb, emo_cond_emb, emo_alpha)
        if weights is None:
            return merged
        w = torch.tensor(weights, dtype=torch.float32, device=self.device)
        spk_matrix, emo_matrix = self.model.emotion_matrices
        rows = emotion_rows(speaker.style, spk_matrix, self.model.config.emo_num)
        return blend_emotion_vector(emotion_matrix_vector(w, rows, emo_matrix, self.model.config.emo_num), w, merged)

    def emotion_from_text(self, text: str) -> list[float]:
        """Eight emotion weights for ``text`` from the folder's QwenEmotion model (EmotionError without it)."""
        if self._qwen is None:
            from tagtune.loaders import AuxModelError
            from tagtune.synthesis.qwen_emotion import QwenEmotion

            try:
                folder = self.model.qwen_emotion_dir
            except AuxModelError as e:
                raise EmotionError(str(e), params=("emo_text",)) from None
            self._qwen = QwenEmotion.load(folder, device=self.device)
        return self._qwen.weights(text)

    def emotion_choice(self, text: str, reference, emotion=None, emo_alpha: float = 1.0,
                       emo_vector: list[float] | None = None, emo_text: str | None = None):
        """``synthesize``'s emotion keywords -> (emotion prompt source, alpha, 8 scaled weights or None), the
        arguments of ``emotion_features`` and ``emotion_vector``; EmotionError for a setting that cannot be used.
        A vector or emotion text (QwenEmotion, "" meaning ``text``) replaces the prompt and is scaled by
        ``emo_alpha``; without a prompt the speaker ``reference`` is the emotion prompt, at alpha 1."""
        emo_alpha = check_emotion_alpha(emo_alpha)
        weights = check_emotion_vector(emo_vector) if emo_vector is not None else None
        if emo_text is not None:
            weights = self.emotion_from_text(emo_text or text)
        if weights is not None:
            weights, emotion = scale_emotion_weights(weights, emo_alpha), None
        if emotion is None:
            emotion, emo_alpha = reference, 1.0
        return emotion, emo_alpha, weights

    # ------------------------------------------------------------------------------------- synthesis

    @torch.no_grad()
    def synthesize(self, text: str, reference, *, emotion=None, emo_alpha: float = 1.0,
                   emo_vector: list[float] | None = None, emo_text: str | None = None,
                   generation: GenerationConfig | None = None, seed: int | None = None,
                   compat: str | None = None, max_sentence_tokens: int | None = None) -> Synthesis:
        """Speak ``text`` in the voice of ``reference``.

        Emotion, as the official ``infer``: an ``emotion`` prompt blended by ``emo_alpha``; or ``emo_vector``
        (8 weights, scaled by ``emo_alpha``); or ``emo_text`` (QwenEmotion turns it into 8 weights; "" means the
        text itself). A vector or emotion text replaces the emotion prompt; without a prompt the speaker prompt
        is the emotion prompt and alpha is 1.
        """
        if compat is not None and compat not in COMPAT_MODES:
            raise UserError(f"unknown compat mode {compat!r}; choose one of {COMPAT_MODES}")
        check_emotion_alpha(emo_alpha)
        seed = check_seed(seed)
        start = time.perf_counter()
        segments = self.sentences(text, max_sentence_tokens)
        emotion, emo_alpha, weights = self.emotion_choice(text, reference, emotion, emo_alpha, emo_vector, emo_text)
        speaker = self.speaker(reference)
        emo_cond_emb = self.emotion_features(emotion)
        emovec = self.emotion_vector(speaker, emo_cond_emb, emo_alpha, weights)
        cfg = self.generation_config(generation, compat)
        anchor = None if self.anchor is None else self.anchor_of(
            self.emotion_vector(speaker, emo_cond_emb, emo_alpha, weights, self.anchor))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        timings = {"emotion": time.perf_counter() - start, "gpt": 0.0, "latents": 0.0, "s2mel": 0.0, "vocoder": 0.0}
        waves, kept, steps = [], [], 0
        noise_seed = seed if compat else None  # compat: fresh noise per segment, drawn right after seeding
        for ids in segments:
            codes, wav = self._segment(speaker, emovec, ids, cfg, generator, timings, noise_seed,
                                       self.gpt if compat else self.fast_gpt, anchor)
            steps += codes.shape[1]
            if wav is not None:
                waves.append(wav)
                kept.append(codes[0])
        audio = self._join(waves)
        timings["total"] = time.perf_counter() - start
        return Synthesis(audio, S2MEL_SAMPLE_RATE, segments, kept, timings, steps)

    def generation_config(self, generation: GenerationConfig | None, compat: str | None) -> GenerationConfig:
        cfg = generation or official_v2()
        # beam sampling starts from beam 0 alone in the transformers release IndexTTS2 runs on, whatever the caller
        cfg = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, self.gpt.cfg.max_mel_tokens),
                      beam_sample_from_first=True)
        check_guidance(cfg, compat, self.anchor is not None)
        if compat:  # infer() always samples; with top_k=1 that is greedy search
            return replace(cfg, do_sample=True, position_mode="official", use_cache=True)
        return cfg

    def _segment(self, speaker: SpeakerPromptV2, emovec, ids: list[int], cfg, generator, timings,
                 noise_seed: int | None = None, decoder=None, anchor: AnchorV2 | None = None):
        """One segment -> (codes (1, N) kept, float wav (1, samples) scaled to int16 range, or None)."""
        spk = speaker.spk_cond_emb
        text_ids = torch.tensor([ids], dtype=torch.int32, device=self.device)
        free_ids = torch.tensor([self.tokenizer.without_tags(ids)], dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        out = generate_codes_v2(decoder or self.gpt, spk, text_ids, emovec, cfg, spk_lengths=feature_width_lengths(spk),
                                generator=generator, free_ids=free_ids, anchor=anchor)
        n = int(code_lengths(out.codes, self.gpt.cfg.stop_mel_token)[0])
        codes = out.codes[:, :n]
        t1 = time.perf_counter()
        timings["gpt"] += t1 - t0
        if n == 0:
            log.warning("a segment produced no speech codes; skipped")
            return codes, None
        return codes, self.segment_audio(speaker, emovec, ids, codes, out.conds, generator, timings, noise_seed)

    def segment_audio(self, speaker: SpeakerPromptV2, emovec, ids: list[int], codes: torch.Tensor,
                      conds: torch.Tensor, generator=None, timings=None, noise_seed: int | None = None):
        """The back end of one segment: its final codes (1, N), N > 0, and speaker latents ``conds`` (1, 32, D)
        -> float wav (1, samples) scaled to int16 range (``generation.v2.speech_from_codes``)."""
        wav = speech_from_codes(self.model, self.gpt, speaker, emovec, ids, codes, conds,
                                lambda frames: self._noise(frames, generator, noise_seed), timings)
        return torch.clamp(PCM_SCALE * wav, -PCM_SCALE, PCM_SCALE)

    def _noise(self, frames: int, generator: torch.Generator | None, seed: int | None) -> torch.Tensor:
        """CFM noise (1, 80, frames): seeded afresh, from the synthesis generator, or from the global RNG."""
        channels = self.model.config.s2mel.DiT.in_channels
        if seed is not None:
            return seeded_noise(frames, seed, channels).to(self.device)
        if generator is None:
            return torch.randn(1, channels, frames).to(self.device)
        return torch.randn(1, channels, frames, generator=generator).to(self.device)

    def _join(self, waves: list[torch.Tensor]) -> np.ndarray:
        """Segments joined with the interval silence between them; the int16 cast truncates toward zero."""
        if not waves:
            return np.zeros(0, dtype=np.int16)
        gap = torch.zeros(1, int(S2MEL_SAMPLE_RATE * self.interval_silence_ms / 1000.0))
        parts = [p for w in waves for p in (w.cpu(), gap)][:-1]
        return torch.cat(parts, dim=1)[0].to(torch.int16).numpy()


def _bounded(cache: dict) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.pop(next(iter(cache)))  # oldest first


def _read_prompt(read, source):
    """Run a prompt reader, reporting unusable audio as a ReferenceAudioError naming the source."""
    from tagtune.audio import AudioError

    try:
        return read()
    except AudioError as e:
        raise ReferenceAudioError(f"reference {e}") from None
