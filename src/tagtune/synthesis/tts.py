"""The TTS object: load a model once, synthesise many texts; reference voices are cached.

Two decoding paths share the models:

* ``compat="official"`` reproduces the official v1.5.0 ``infer`` exactly: one sentence at a time, fp32,
  KV-cache mel positions (k-th code at position k+1), ``remove_long_silence``, unbatched latent pass and
  vocoder, float -> int16 by truncation.
* the fast path (default) packs sentences into batches for generation and the latent pass, vocodes them
  joined in one call (context crosses sentence boundaries, as in the official ``infer_fast``), and runs the GPT
  decode in reduced precision (``fast_gpt.py``) when asked. Mel positions default to the training ones
  ("train"); under greedy fp32 decoding with equal positions its codes equal the compat path's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tagtune.audio import SAMPLE_RATE, write_wav
from tagtune.errors import UserError
from tagtune.generation import (
    GenerationConfig,
    batched_latents,
    generate_codes,
    generate_sentences,
    latents_for_vocoder,
    length_groups,
    remove_long_silence,
    vocode_joined,
)
from tagtune.generation.guidance import Anchor
from tagtune.precision import resolve_latent_precision, resolve_precision
from tagtune.synthesis.reference import Reference, ReferenceCache

if TYPE_CHECKING:
    from tagtune.synthesis.tts_v2 import TTSV2

log = logging.getLogger(__name__)

PCM_SCALE = 32767.0  # official: clamp(32767 * wav, ±32767), then an int16 cast (truncation toward zero)
MAX_SENTENCE_TOKENS = 120  # official ``infer`` packing limit (``infer_fast`` uses 100)
MAX_TEXT_CHARS = 2000  # about two minutes of speech; work and memory grow with the text, so longer is refused
MAX_SEED = 2**63 - 1  # the largest seed torch.Generator.manual_seed takes as a signed 64-bit value
DEFAULT_BATCH = 8  # sentences per generation batch on the fast path
COMPAT_MODES = ("official",)


class TextError(UserError, ValueError):
    """Text that cannot be synthesised (empty, too long, or nothing left after normalisation)."""


class SeedError(UserError, ValueError):
    """A seed that is not an integer in [0, MAX_SEED]."""


def check_seed(seed) -> int | None:
    """``seed`` as an int (None stays None); integral floats, as number fields deliver them, are accepted."""
    if seed is None:
        return None
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SeedError(f"the seed must be an integer from 0 to {MAX_SEED} (2**63 - 1), got {seed!r}",
                        params=("seed",))
    return seed


def text_to_sentences(tokenizer, text: str, max_sentence_tokens: int = MAX_SENTENCE_TOKENS,
                      max_chars: int = MAX_TEXT_CHARS) -> list[list[int]]:
    """Text -> GPT sentences (ids), packed as the official ``split_sentences``; tags stay whole.

    Raises TextError for empty or over-long text (counted before normalisation, which costs time in
    proportion) or text with nothing left to say, and UnknownTagError for a tag the tokenizer does not know.
    """
    if not isinstance(text, str) or not text.strip():
        raise TextError("the text is empty", params=("text",))
    if len(text) > max_chars:
        raise TextError(f"the text has {len(text)} characters; the limit is {max_chars}: split it into "
                        "shorter texts", params=("text",))
    pieces = tokenizer.tokenize(text)
    chunks = tokenizer.split_sentences(pieces, max_sentence_tokens)
    ids = [s for s in (tokenizer.convert_tokens_to_ids(c) for c in chunks) if s]
    if not ids:
        raise TextError(f"nothing to say in {_preview(text)} after normalisation", params=("text",))
    return ids


def _preview(text: str, chars: int = 60) -> str:
    """The text quoted on one line, shortened for a message."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= chars else flat[: chars - 3] + "...")


@dataclass
class Synthesis:
    """One synthesised text: int16 samples at 24 kHz and what it took to make them."""

    audio: np.ndarray  # (N,) int16
    sample_rate: int
    sentences: list[list[int]]  # text ids per GPT sentence
    codes: list[torch.Tensor]  # mel codes per sentence, after silence removal
    timings: dict[str, float] = field(default_factory=dict)  # seconds: gpt, latents, vocoder, total
    steps: int = 0  # decode steps run (each emits one code per row)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def tokens(self) -> int:
        """Codes kept (stop codes excluded), summed over sentences."""
        return sum(int(c.numel()) for c in self.codes)

    def save(self, path: str | Path) -> Path:
        """Write the audio as a 16-bit PCM wav (atomically); returns ``path``."""
        return write_wav(path, self.audio, self.sample_rate)

    @property
    def rtf(self) -> float:
        """Real-time factor: wall time over audio duration."""
        return self.timings.get("total", 0.0) / max(self.seconds, 1e-9)


class TTS:
    """Text-to-speech with one IndexTTS model; construct with :meth:`load` or from loaded components.

    gpt: fp32 UnifiedVoice (eval); vocoder: BigVGAN with weight norm folded; tokenizer: TextTokenizer;
    mel: MelSpectrogram. ``precision`` ("fp32", "bf16", "fp16", "int8", "auto") applies to the fast path's
    GPT decode only; compat mode always runs the fp32 model. ``latent_precision`` ("fp32", "bf16", "auto") is
    the fast path's latent pass (streamed or whole); "auto" is bf16 where the decode is reduced on a CPU with
    native bf16 (``precision.resolve_latent_precision``), fp32 otherwise. ``position_mode`` ("train" or "official") is
    the fast path's mel positions; ``batch_size`` the sentences generated together; ``max_text_chars`` the
    longest text accepted. ``anchor``: the base model's fp32 GPT that the fast path's guided decoding starts from
    (``generation/guidance.py``: the tuned model then contributes only what its tags change); None decodes
    the model alone.
    """

    def __init__(self, gpt, vocoder, tokenizer, mel, *, precision: str = "fp32", batch_size: int = DEFAULT_BATCH,
                 max_sentence_tokens: int = MAX_SENTENCE_TOKENS, position_mode: str = "train",
                 references: ReferenceCache | None = None, name: str = "model",
                 max_text_chars: int = MAX_TEXT_CHARS, latent_precision: str = "auto", anchor=None):
        self.gpt, self.vocoder, self.tokenizer, self.anchor = gpt, vocoder, tokenizer, anchor
        self.device = gpt.mel_head.weight.device
        self.precision = resolve_precision(precision, self.device)
        self.latent_precision = resolve_latent_precision(latent_precision, self.precision, self.device)
        self.batch_size, self.position_mode, self.name = batch_size, position_mode, name
        self.max_text_chars = max_text_chars
        # a sentence can never exceed what the text position table holds
        self.max_sentence_tokens = min(max_sentence_tokens, gpt.cfg.max_text_tokens)
        if references is None:
            from tagtune.audio import MelSpectrogram

            references = ReferenceCache(gpt, vocoder, mel if mel is not None else MelSpectrogram(), anchor=anchor)
        self.references = references
        self._fast_gpt = None
        self._fast_anchor = None
        self._latent_gpt = None

    @classmethod
    def load(cls, model_dir: str | Path, adapter: str | Path | None = None, *, device: str = "cpu",
             precision: str = "auto", unknown_tags: str = "error", base_anchor: str | Path | None = None,
             **options) -> TTS | TTSV2:
        """Open an official or exported model folder, optionally with a LoRA adapter folder on top.

        ``base_anchor``: the base model folder the tuned model was trained from; guided decoding then starts from
        the base (``generation/guidance.py``). An IndexTTS-2 folder gives a ``synthesis.tts_v2.TTSV2`` (same
        calls, plus emotion settings)."""
        from tagtune.loaders import load_model

        m = load_model(model_dir, adapter, device=device, unknown_tags=unknown_tags)
        m.check_vocabulary()
        if base_anchor is not None:
            options["anchor"] = load_anchor(m, base_anchor, device)
        if m.family == "v2":
            from tagtune.synthesis.tts_v2 import TTSV2

            v2_options = {k: v for k, v in options.items() if k in ("max_text_chars", "anchor")}
            return TTSV2(m, name=str(model_dir), precision=precision, **v2_options)
        return cls(m.gpt, m.vocoder, m.tokenizer, m.mel, precision=precision, name=str(adapter or model_dir),
                   **options)

    # ------------------------------------------------------------------------------------------ text

    @staticmethod
    def default_generation() -> GenerationConfig:
        """The official v1.5.0 decoding (3-beam sampling, top-k 30, top-p 0.8, repetition penalty 10)."""
        return GenerationConfig()

    @property
    def known_tags(self) -> list[str]:
        """Canonical tags this model's tokenizer knows (empty for a base model)."""
        return list(self.tokenizer.tag_ids)

    def sentences(self, text: str, max_sentence_tokens: int | None = None) -> list[list[int]]:
        """Text -> GPT sentences (ids), packed as the official ``split_sentences``; tags stay whole.

        ``max_sentence_tokens`` replaces the model's packing limit for this call (capped by the text positions).
        """
        limit = self.max_sentence_tokens
        if max_sentence_tokens is not None:
            if max_sentence_tokens < 1:
                raise TextError(f"max_sentence_tokens must be >= 1, got {max_sentence_tokens}")
            limit = min(int(max_sentence_tokens), self.gpt.cfg.max_text_tokens)
        return text_to_sentences(self.tokenizer, text, limit, self.max_text_chars)

    # ------------------------------------------------------------------------------------ synthesis

    def reference(self, source) -> Reference:
        """The cached Reference of a path, file bytes or (rate, samples)."""
        return self.references.get(source)

    @torch.no_grad()
    def synthesize(self, text: str, reference, *, generation: GenerationConfig | None = None,
                   seed: int | None = None, compat: str | None = None,
                   max_sentence_tokens: int | None = None) -> Synthesis:
        """Speak ``text`` in the voice of ``reference``; ``seed`` makes sampling reproducible."""
        if compat is not None and compat not in COMPAT_MODES:
            raise UserError(f"unknown compat mode {compat!r}; choose one of {COMPAT_MODES}")
        seed = check_seed(seed)
        start = time.perf_counter()
        sentences = self.sentences(text, max_sentence_tokens)  # text first: checked without touching the audio
        ref = self.reference(reference)
        cfg = self.generation_config(generation, compat)
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        run = self._run_official if compat else self._run_fast
        out = run(ref, sentences, cfg, generator)
        out.timings["total"] = time.perf_counter() - start
        return out

    def stream(self, text: str, reference, *, generation: GenerationConfig | None = None,
               seed: int | None = None, max_sentence_tokens: int | None = None) -> Iterator[np.ndarray]:
        """Speak ``text`` as int16 chunks at ``SAMPLE_RATE``, in order, while it is generated (fast path).

        Joined, the chunks equal ``synthesize`` with the same settings and seed (same codes; audio within
        ``synthesis.stream.STREAM_TOLERANCE_LSB``). Bad text, seed or reference raise here, before any chunk.
        """
        from tagtune.synthesis.stream import stream_speech

        seed = check_seed(seed)
        sentences = self.sentences(text, max_sentence_tokens)
        ref = self.reference(reference)
        cfg = self.generation_config(generation, None)
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        return stream_speech(self, ref, sentences, cfg, generator)

    def generation_config(self, generation: GenerationConfig | None, compat: str | None) -> GenerationConfig:
        cfg = generation or GenerationConfig()
        limit = self.gpt.cfg.max_mel_tokens  # the official limit is 600 new codes; tiny models hold fewer
        cfg = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, limit))
        check_guidance(cfg, compat, self.anchor is not None)
        if compat:
            return replace(cfg, position_mode="official", use_cache=True)
        return replace(cfg, position_mode=self.position_mode, use_cache=True)

    def _run_official(self, ref: Reference, sentences, cfg, generator) -> Synthesis:
        """The official v1.5.0 ``infer`` loop: sentence by sentence, fp32, no batching."""
        stop = self.gpt.cfg.stop_mel_token
        waves, kept, timings, steps = [], [], {"gpt": 0.0, "latents": 0.0, "vocoder": 0.0}, 0
        for ids in sentences:
            text_ids = torch.tensor([ids], dtype=torch.int32, device=self.device)
            free_ids = torch.tensor([self.tokenizer.without_tags(ids)], dtype=torch.long, device=self.device)
            t0 = time.perf_counter()
            codes, _ = generate_codes(self.gpt, text_ids, cfg, conds=ref.conds, generator=generator,
                                      free_ids=free_ids)
            steps += codes.shape[1]
            codes, lens = remove_long_silence(codes, stop_token=stop)
            t1 = time.perf_counter()
            if int(lens[0]) == 0:  # stopped at once: nothing to vocode
                log.warning("a sentence produced no speech codes; skipped")
                continue
            latent = latents_for_vocoder(self.gpt, ref.conds, text_ids, codes, lens)  # (1, N, D)
            t2 = time.perf_counter()
            wav = self.vocoder(latent, speaker=ref.speaker)[:, 0]  # (1, N·1024)
            waves.append(torch.clamp(PCM_SCALE * wav, -PCM_SCALE, PCM_SCALE))
            kept.append(codes[0, : int(lens[0])])
            for k, dt in zip(("gpt", "latents", "vocoder"), (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                timings[k] += dt
        audio = _to_int16(waves)
        return Synthesis(audio, SAMPLE_RATE, sentences, kept, timings, steps)

    def _run_fast(self, ref: Reference, sentences, cfg, generator) -> Synthesis:
        """Batched generation, latent pass and vocoder; GPT decode in ``self.precision``."""
        timings = {"gpt": 0.0, "latents": 0.0, "vocoder": 0.0}
        codes: list[torch.Tensor] = [None] * len(sentences)  # type: ignore[list-item]
        steps = 0
        for group in length_groups([len(s) for s in sentences], self.batch_size):  # similar lengths share a batch
            t0 = time.perf_counter()
            found, n = generate_sentences(self.fast_gpt, [sentences[i] for i in group], cfg, ref.conds, generator,
                                          [self.tokenizer.without_tags(sentences[i]) for i in group],
                                          self.anchor_of(ref))
            timings["gpt"] += time.perf_counter() - t0
            steps += n
            for i, c in zip(group, found):
                codes[i] = c
        t0 = time.perf_counter()
        latents = batched_latents(self.latent_gpt, ref.conds, sentences, codes, self.batch_size)
        t1 = time.perf_counter()
        waves = vocode_joined(self.vocoder, latents, ref.speaker)
        timings["latents"], timings["vocoder"] = t1 - t0, time.perf_counter() - t1
        audio = _to_int16([torch.clamp(PCM_SCALE * w, -PCM_SCALE, PCM_SCALE)[None] for w in waves])
        return Synthesis(audio, SAMPLE_RATE, sentences, codes, timings, steps)

    @property
    def fast_gpt(self):
        """The GPT the fast path decodes with (a reduced-precision copy unless fp32), built on first use."""
        if self._fast_gpt is None:
            from tagtune.synthesis.fast_gpt import prepare_gpt

            self._fast_gpt = self.gpt if self.precision == "fp32" else prepare_gpt(self.gpt, self.precision)
        return self._fast_gpt

    def anchor_of(self, ref: Reference):
        """The ``guidance.Anchor`` of ``ref`` (the base GPT the fast path decodes in, with its own latents of the
        reference), or None when this model decodes alone."""
        if self.anchor is None:
            return None
        if self._fast_anchor is None:
            from tagtune.synthesis.fast_gpt import prepare_gpt

            self._fast_anchor = self.anchor if self.precision == "fp32" else prepare_gpt(self.anchor, self.precision)
        conds = ref.anchor_conds
        if conds is None:  # a Reference from a cache made without the anchor
            frames = torch.tensor([ref.cond_mel.shape[-1]], device=ref.cond_mel.device)
            conds = self.anchor.get_conditioning(ref.cond_mel, frames)
        return Anchor(self._fast_anchor, conds)

    @property
    def latent_gpt(self):
        """The GPT the fast path's latent pass runs on: the fp32 model, or one with a bf16 backbone copy
        (``latent_precision``; 0.9 GB more at full size), built on first use."""
        if self._latent_gpt is None:
            from tagtune.synthesis.fast_gpt import latent_model

            bf16 = self.latent_precision == "bf16"
            self._latent_gpt = latent_model(self.gpt, torch.bfloat16) if bf16 else self.gpt
        return self._latent_gpt


def check_guidance(cfg: GenerationConfig, compat: str | None, anchored: bool) -> None:
    """One-line UserErrors for guidance settings that cannot apply: tag guidance or an anchor with the official
    decoding, an anchor share without an anchor."""
    if compat and cfg.tag_guidance != 1.0:
        raise UserError("tag guidance is not part of the official decoding: drop --compat or --tag-guidance")
    if compat and anchored:
        raise UserError("decoding anchored to the base is not part of the official decoding: drop --compat or "
                        "--base-anchor")
    if cfg.anchor_share != 0.0 and not anchored:
        raise UserError("an anchor share moves the start of decoding anchored to the base: give --base-anchor BASE "
                        "or drop --anchor-share")


def load_anchor(tuned, base_dir: str | Path, device) -> torch.nn.Module:
    """The fp32 GPT of the base model folder ``base_dir`` that ``tuned`` (a loaded model) was trained from; a
    UserError when it cannot be: another family, or text and code tables that are not the tuned model's
    without its tags."""
    from tagtune.loaders import load_model

    base = load_model(base_dir, device=device)
    tags = len(tuned.tokenizer.tag_ids)
    if base.family != tuned.family:
        names = {"v1": "IndexTTS 1.x", "v2": "IndexTTS-2"}
        raise UserError(f"--base-anchor {base_dir}: an {names[base.family]} folder, the model is "
                        f"{names[tuned.family]}")
    mine, theirs = tuned.gpt.cfg, base.gpt.cfg
    if (theirs.text_rows + tags != mine.text_rows or theirs.number_mel_codes != mine.number_mel_codes
            or theirs.model_dim != mine.model_dim):
        raise UserError(f"--base-anchor {base_dir}: not the base this model was trained from (text rows "
                        f"{theirs.text_rows} + {tags} tags against {mine.text_rows}, codes {theirs.number_mel_codes} "
                        f"against {mine.number_mel_codes}, width {theirs.model_dim} against {mine.model_dim})")
    return base.gpt


def _to_int16(waves: list[torch.Tensor]) -> np.ndarray:
    """Scaled float rows (1, n_i) -> one int16 array; the cast truncates toward zero as the official one."""
    if not waves:
        return np.zeros(0, dtype=np.int16)
    return torch.cat(waves, dim=1)[0].to(torch.int16).cpu().numpy()
