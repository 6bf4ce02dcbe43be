"""Reference voices for synthesis: read once, turned into everything the models need, cached by content.

A reference becomes its 100-band log-mel, the GPT's 32 conditioning latents and BigVGAN's speaker embedding.
Those depend only on the audio, so ``ReferenceCache`` keys them by the file's path, size and modification time
(or by a hash of raw bytes) and a TTS object computes them once per voice.

Only the first ``MAX_REFERENCE_SECONDS`` of a recording are decoded (the rest would be cut anyway), and
recordings no voice can be taken from (NaN/inf samples, silence, under ``MIN_REFERENCE_SECONDS``) are refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagtune.audio import (
    RESAMPLE_LOOKAHEAD_SECONDS,
    SAMPLE_RATE,
    AudioError,
    check_format,
    check_signal,
    load_reference,
    resample,
)
from tagtune.errors import UserError

log = logging.getLogger(__name__)

MIN_REFERENCE_SECONDS = 1.0  # shorter prompts carry too little voice for the conformer / ECAPA
MAX_REFERENCE_SECONDS = 30.0  # longer ones are trimmed: the conditioning gains nothing and costs time
CACHE_SIZE = 16
RECORDING = "(recording)"  # how messages name samples handed over as an array


class ReferenceAudioError(UserError, ValueError):
    """A reference voice that is missing, unreadable, corrupt, silent or too short."""


@dataclass
class Reference:
    """A reference voice ready for synthesis (all tensors on the model's device, fp32)."""

    cond_mel: torch.Tensor  # (1, 100, T) log-mel, the official ``cond_mel``
    conds: torch.Tensor  # (1, 32, D) GPT conditioning latents
    speaker: torch.Tensor  # (1, 1, E) BigVGAN speaker embedding
    seconds: float  # duration used (after trimming)
    trimmed: bool = False
    anchor_conds: torch.Tensor | None = None  # (1, 32, D) the base model's latents, when decoding is anchored to it


def reference_key(source) -> str:
    """Cache key: path + size + mtime for files, a content hash for bytes or (rate, samples) arrays."""
    if isinstance(source, (bytes, bytearray)):
        return "bytes:" + hashlib.sha1(source).hexdigest()
    if isinstance(source, tuple):
        rate, samples = source
        return f"array:{rate}:" + hashlib.sha1(np.ascontiguousarray(samples).tobytes()).hexdigest()
    path = Path(source)
    try:
        st = path.stat()
    except OSError:
        raise ReferenceAudioError(f"reference audio {path}: not found") from None
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def read_reference_audio(source, min_seconds: float = MIN_REFERENCE_SECONDS,
                         max_seconds: float = MAX_REFERENCE_SECONDS) -> tuple[torch.Tensor, bool]:
    """Mono 24 kHz samples (1, N) of a reference and whether it was cut to ``max_seconds`` (with a warning).

    ``source``: a path, encoded file bytes, or ``(sample_rate, samples)`` as a web form delivers it. Only the
    start of a long recording is decoded.
    """
    try:
        if isinstance(source, tuple):
            wav = _array_reference(*source, max_seconds=max_seconds)
        else:
            wav = load_reference(source, max_seconds)
    except AudioError as e:  # "audio NAME: problem"
        raise ReferenceAudioError(f"reference {e}") from None
    name = _source_name(source)
    seconds = wav.shape[-1] / SAMPLE_RATE
    if seconds < min_seconds:
        raise ReferenceAudioError(f"reference audio {name} is {seconds:.2f} s long; at least {min_seconds:g} s "
                                  "of speech is needed")
    if seconds <= max_seconds:
        return wav, False
    log.warning("reference audio %s is longer than %g s; using its first %g s", name, max_seconds, max_seconds)
    return wav[:, : int(max_seconds * SAMPLE_RATE)], True


def _source_name(source) -> str:
    if isinstance(source, tuple):
        return RECORDING
    return f"({len(source)} bytes)" if isinstance(source, (bytes, bytearray)) else str(source)


def _array_reference(rate: int, samples, max_seconds: float) -> torch.Tensor:
    """(rate, samples (N,) or (N, C), integer PCM or float) -> mono float (1, N) at 24 kHz, about
    ``max_seconds`` long at most (cut exactly by the caller)."""
    x = np.asarray(samples)
    if x.size == 0:
        raise AudioError(f"audio {RECORDING}: holds no samples")
    x = x.reshape(x.shape[0], -1)  # (N, C)
    check_format(RECORDING, int(rate), x.shape[1])
    x = x[: int((max_seconds + RESAMPLE_LOOKAHEAD_SECONDS) * rate) + 1]
    if np.issubdtype(x.dtype, np.signedinteger):  # PCM: full scale is 2 ** (bits - 1)
        x = x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    x = x.astype(np.float32)
    check_signal(x, RECORDING)
    wav = torch.from_numpy(x.T.copy()).mean(dim=0, keepdim=True)  # (1, N)
    return resample(wav, int(rate), SAMPLE_RATE)


class ReferenceCache:
    """Computes and remembers :class:`Reference` objects for a GPT + vocoder pair (and the latents of ``anchor``,
    the base GPT that guided decoding starts from, when given)."""

    def __init__(self, gpt, vocoder, mel, *, min_seconds: float = MIN_REFERENCE_SECONDS,
                 max_seconds: float = MAX_REFERENCE_SECONDS, size: int = CACHE_SIZE, anchor=None):
        self.gpt, self.vocoder, self.mel, self.anchor = gpt, vocoder, mel, anchor
        self.min_seconds, self.max_seconds, self.size = min_seconds, max_seconds, size
        self._items: dict[str, Reference] = {}

    def __len__(self) -> int:
        return len(self._items)

    @torch.no_grad()
    def get(self, source) -> Reference:
        """The Reference for ``source`` (a path, bytes or (rate, samples)); computed on first use."""
        if isinstance(source, Reference):
            return source
        key = reference_key(source)
        if key not in self._items:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))  # oldest first
            self._items[key] = self._compute(source)
        return self._items[key]

    def _compute(self, source) -> Reference:
        wav, trimmed = read_reference_audio(source, self.min_seconds, self.max_seconds)
        device = self.gpt.mel_head.weight.device
        cond_mel = self.mel(wav.to(device))  # (1, 100, T)
        lengths = torch.tensor([cond_mel.shape[-1]], device=device)
        conds = self.gpt.get_conditioning(cond_mel, lengths)  # (1, 32, D)
        speaker = self.vocoder.speaker_embedding(cond_mel.transpose(1, 2))  # (1, 1, E)
        anchor = None if self.anchor is None else self.anchor.get_conditioning(cond_mel, lengths)
        return Reference(cond_mel, conds, speaker, wav.shape[-1] / SAMPLE_RATE, trimmed, anchor)
