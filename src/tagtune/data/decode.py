"""Audio bytes or files -> checked mono float32 waveform at the model rate.

Everything here is numpy + soundfile + soxr (no torch), so it runs cheaply in decoding worker processes.
Every failure is returned as a :class:`Rejection` with a reason code from the table below; nothing raises.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MODEL_SAMPLE_RATE = 24000
SAMPLES_PER_CODE = 1024  # gpt.mel_length_compression: one DVAE code per 1024 samples
MIN_SAMPLE_RATE = 4000  # below this a file is surely mislabelled, not speech
MAX_SAMPLE_RATE = 384000  # the highest rate real recorders write
MAX_CHANNELS = 8  # more than 7.1 surround is not a speech recording
SILENCE_PEAK = 1e-3  # -60 dBFS: a clip whose loudest sample is below this holds no speech
MIN_SAMPLES = 512  # the centred STFT's reflect padding (n_fft / 2) needs more samples than this
TRIM_FRAME = 512  # samples per RMS frame when trimming (21 ms at 24 kHz)

# Rejection reason codes (also the keys of the manifest's rejection counts).
MISSING_AUDIO = "missing_audio"
UNDECODABLE_AUDIO = "undecodable_audio"
EMPTY_AUDIO = "empty_audio"
BAD_SAMPLE_RATE = "bad_sample_rate"
TOO_MANY_CHANNELS = "too_many_channels"
NON_FINITE_AUDIO = "non_finite_audio"
SILENT_AUDIO = "silent_audio"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"


@dataclass(frozen=True)
class Rejection:
    """Why one clip was dropped: a reason code plus a human-readable detail."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class DecodeSettings:
    """How clips are decoded and which durations the model accepts."""

    sample_rate: int = MODEL_SAMPLE_RATE
    trim_silence: bool = False
    trim_db: float = 40.0  # frames quieter than the loudest frame by more than this are silence
    trim_margin_s: float = 0.1  # silence kept on each side of the speech after trimming
    min_seconds: float = 0.5
    max_codes: int = 800  # gpt.max_mel_tokens of the target model

    def __post_init__(self):
        if self.min_seconds < 0 or self.max_codes <= 0 or self.trim_db <= 0:
            raise ValueError(f"invalid decode settings: {self}")


def codes_for_samples(n: int, hop: int = 256) -> int:
    """DVAE codes for ``n`` samples: mel frames n//hop + 1 (centred STFT), then two stride-2 convs."""
    frames = n // hop + 1
    return math.ceil(math.ceil(frames / 2) / 2)


def read_audio(blob: bytes | str | Path | None) -> tuple[np.ndarray, int] | Rejection:
    """Decode a file path or encoded bytes to ``(frames, channels)`` float32 and its sample rate."""
    if blob is None:
        return Rejection(MISSING_AUDIO, "no audio bytes or path")
    if isinstance(blob, (str, Path)) and not Path(blob).is_file():
        return Rejection(MISSING_AUDIO, f"file not found: {blob}")
    if len(blob) == 0 if isinstance(blob, (bytes, bytearray)) else Path(blob).stat().st_size == 0:
        return Rejection(EMPTY_AUDIO, "zero bytes")
    source = io.BytesIO(blob) if isinstance(blob, (bytes, bytearray)) else str(blob)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        return Rejection(UNDECODABLE_AUDIO, f"{type(e).__name__}: {e}".strip()[:200])
    return data, int(rate)


def trim_bounds(wav: np.ndarray, settings: DecodeSettings) -> tuple[int, int]:
    """(start, end) sample range left after dropping leading/trailing frames quieter than ``trim_db``
    below the loudest frame, keeping a margin."""
    n_frames = len(wav) // TRIM_FRAME
    if n_frames < 2:
        return 0, len(wav)
    frames = wav[: n_frames * TRIM_FRAME].reshape(n_frames, TRIM_FRAME)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))  # (n_frames,)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-settings.trim_db / 20))
    margin = int(settings.trim_margin_s * settings.sample_rate)
    start = max(0, loud[0] * TRIM_FRAME - margin)
    end = min(len(wav), (loud[-1] + 1) * TRIM_FRAME + margin)
    return int(start), int(end)


def trim_silence(wav: np.ndarray, settings: DecodeSettings) -> np.ndarray:
    """``wav`` without its leading/trailing silence (see ``trim_bounds``)."""
    start, end = trim_bounds(wav, settings)
    return wav[start:end]


def check_signal(data: np.ndarray, rate: int) -> Rejection | None:
    """Reject decoded audio no speech model should see (empty, odd rate, many channels, NaN, silence)."""
    if data.shape[0] == 0:
        return Rejection(EMPTY_AUDIO, "no samples")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return Rejection(BAD_SAMPLE_RATE, f"{rate} Hz outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    if data.shape[1] > MAX_CHANNELS:
        return Rejection(TOO_MANY_CHANNELS, f"{data.shape[1]} channels (max {MAX_CHANNELS})")
    if not np.isfinite(data).all():
        return Rejection(NON_FINITE_AUDIO, f"{int((~np.isfinite(data)).sum())} NaN/inf samples")
    peak = float(np.abs(data).max())
    if peak < SILENCE_PEAK:
        return Rejection(SILENT_AUDIO, f"peak {peak:.2e} below {SILENCE_PEAK:g}")
    return None


def check_duration(n: int, settings: DecodeSettings) -> Rejection | None:
    """Reject clips shorter than ``min_seconds`` or with more DVAE codes than the model's mel maximum."""
    seconds = n / settings.sample_rate
    if seconds < settings.min_seconds or n <= MIN_SAMPLES:
        return Rejection(TOO_SHORT, f"{seconds:.3f} s < {settings.min_seconds} s")
    codes = codes_for_samples(n)
    if codes > settings.max_codes:
        return Rejection(TOO_LONG, f"{seconds:.2f} s = {codes} codes > max_mel_tokens {settings.max_codes}")
    return None


@dataclass(frozen=True)
class DecodedClip:
    """A decoded clip and how its samples map to the source file's (for event boundaries)."""

    wav: np.ndarray  # float32 (N,) at the model rate
    source_rate: int
    trim_start: int  # samples (model rate) dropped from the start by trimming


def decode_clip_info(blob: bytes | str | Path | None, settings: DecodeSettings) -> DecodedClip | Rejection:
    """Decode, check, mix to mono, resample (soxr) and optionally trim one clip."""
    read = read_audio(blob)
    if isinstance(read, Rejection):
        return read
    data, rate = read  # (frames, channels)
    bad = check_signal(data, rate)
    if bad is not None:
        return bad
    wav = data.mean(axis=1)  # (frames,) channel mean, as the official reference loading does
    if rate != settings.sample_rate:
        wav = soxr.resample(wav, rate, settings.sample_rate, quality="HQ").astype(np.float32)
    start = 0
    if settings.trim_silence:
        start, end = trim_bounds(wav, settings)
        wav = wav[start:end]
    bad = check_duration(len(wav), settings)
    return bad if bad is not None else DecodedClip(np.ascontiguousarray(wav, dtype=np.float32), rate, start)


def decode_clip(blob: bytes | str | Path | None, settings: DecodeSettings) -> np.ndarray | Rejection:
    """Like ``decode_clip_info`` but returns only the waveform, float32 ``(N,)`` at ``settings.sample_rate``."""
    out = decode_clip_info(blob, settings)
    return out if isinstance(out, Rejection) else out.wav


def map_events(events, clip: DecodedClip, n_samples: int, model_rate: int) -> list[dict] | None:
    """Event boundaries in the prepared clip's samples (model rate, after trimming), clipped to the clip.

    Source boundaries are in the source file's samples unless an event carries its own ``sample_rate``.
    Events that fall entirely outside the kept audio are dropped.
    """
    if not isinstance(events, list) or not events:
        return None
    out = []
    for ev in events:
        if not (isinstance(ev, dict) and isinstance(ev.get("start_sample"), (int, float))
                and isinstance(ev.get("end_sample"), (int, float))):
            continue  # unusable boundaries: the clip is still used, without them
        rate = ev.get("sample_rate", clip.source_rate)
        start = round(ev["start_sample"] * model_rate / rate) - clip.trim_start
        end = round(ev["end_sample"] * model_rate / rate) - clip.trim_start
        start, end = max(0, start), min(n_samples, end)
        if end > start:
            out.append({**{k: v for k, v in ev.items() if k != "sample_rate"}, "start_sample": start, "end_sample": end})
    return out
