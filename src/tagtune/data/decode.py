"""Audio bytes or files -> checked mono float32 waveform at the model rate.

Everything here is numpy + soundfile + soxr (no torch), so it runs cheaply in decoding worker processes.
Every failure of a clip is returned as a :class:`Rejection` with a reason code from the table below; only
invalid settings raise.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tagtune.audio import SAMPLE_RATE as MODEL_SAMPLE_RATE
from tagtune.errors import UserError

MIN_SAMPLE_RATE = 4000  # below this a file is surely mislabelled, not speech
MAX_SAMPLE_RATE = 384000  # the highest rate real recorders write
MAX_CHANNELS = 8  # more than 7.1 surround is not a speech recording
SILENCE_PEAK = 1e-3  # -60 dBFS: a clip whose loudest sample is below this holds no speech
MIN_SAMPLES = 512  # the centred STFT's reflect padding (n_fft / 2) needs more samples than this
TRIM_FRAME = 512  # samples per RMS frame when trimming (21 ms at 24 kHz)
DIGEST_CHARS = 16  # hex digits of the sha256 that identifies a clip's encoded audio (duplicate detection)
MAX_DETAIL_CHARS = 200
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"

# Rejection reason codes (also the keys of the manifest's rejection counts).
MISSING_AUDIO = "missing_audio"
NOT_A_FILE = "not_a_file"  # a folder, FIFO, device or socket where an audio file was expected
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


class SettingsError(UserError, ValueError):
    """Preparation settings that cannot work (a fraction outside [0, 1), a negative duration, ...)."""


@dataclass(frozen=True)
class EncodedAudio:
    """Encoded audio bytes with the name the corpus gives them (a parquet cell's ``audio.path``)."""

    data: bytes
    name: str


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
        for name in ("min_seconds", "trim_db", "trim_margin_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SettingsError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.trim_db == 0 or self.max_codes <= 0 or self.sample_rate <= 0:
            raise SettingsError(f"trim_db, max_codes and sample_rate must be positive, got {self.trim_db!r}, "
                                f"{self.max_codes!r}, {self.sample_rate!r}")


def codes_for_samples(n: int, hop: int = 256) -> int:
    """DVAE codes for ``n`` samples: mel frames n//hop + 1 (centred STFT), then two stride-2 convs."""
    frames = n // hop + 1
    return math.ceil(math.ceil(frames / 2) / 2)


_SPECIAL_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "another kind of file")


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is no regular file ("a FIFO", "a folder", ...); else None.

    Follows symbolic links; only ``stat`` is called, so a FIFO or a device is never opened.
    """
    try:
        return _kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def _file_problem(path: str | Path) -> Rejection | None:
    """Why ``path`` cannot be read as an audio file (missing, a broken link, a device, ...); None if it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return Rejection(MISSING_AUDIO, f"broken symbolic link: {path} -> {os.readlink(path)}")
        return Rejection(MISSING_AUDIO, f"file not found: {path}")
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission on a folder
        why = getattr(e, "strerror", None) or e
        return Rejection(MISSING_AUDIO, f"cannot read {str(path)[:MAX_DETAIL_CHARS]}: {why}")
    kind = _kind(mode)
    return Rejection(NOT_A_FILE, f"not a regular file ({kind}): {path}") if kind else None


def _load(blob: bytes | str | Path | EncodedAudio) -> tuple[bytes, str] | Rejection:
    """The encoded bytes of a clip and the name to report it by (its path, or the corpus's name for it)."""
    if isinstance(blob, EncodedAudio):
        return blob.data, blob.name
    if isinstance(blob, (bytes, bytearray)):
        return bytes(blob), ""
    if (problem := _file_problem(blob)) is not None:
        return problem
    try:
        return Path(blob).read_bytes(), str(blob)
    except OSError as e:
        return Rejection(MISSING_AUDIO, f"cannot read {blob}: {e.strerror or e}")


def _decode_error(e: Exception, name: str) -> Rejection:
    """A readable one-line detail: soundfile's own message, never an object repr."""
    message = getattr(e, "error_string", None) or _OBJECT_REPR.sub("the audio bytes", str(e))
    detail = f"{type(e).__name__}: {' '.join(str(message).split())}"
    return Rejection(UNDECODABLE_AUDIO, (f"{name}: {detail}" if name else detail)[:MAX_DETAIL_CHARS])


def read_audio(blob: bytes | str | Path | EncodedAudio | Rejection | None) -> tuple[np.ndarray, int, str] | Rejection:
    """Decode a file path or encoded bytes to ``(frames, channels)`` float32, its sample rate and a digest.

    The digest (sha256 of the encoded bytes, ``DIGEST_CHARS`` hex digits) identifies identical audio. A
    ``Rejection`` passes through (a source that could not fetch the clip).
    """
    if isinstance(blob, Rejection):
        return blob
    if blob is None:
        return Rejection(MISSING_AUDIO, "no audio bytes or path")
    loaded = _load(blob)
    if isinstance(loaded, Rejection):
        return loaded
    data, name = loaded
    if not data:
        return Rejection(EMPTY_AUDIO, f"{name}: zero bytes" if name else "zero bytes")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        return _decode_error(e, name)
    return samples, int(rate), hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


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
    digest: str = ""  # of the encoded audio (see ``read_audio``)


def decode_clip_info(blob: bytes | str | Path | EncodedAudio | Rejection | None,
                     settings: DecodeSettings) -> DecodedClip | Rejection:
    """Decode, check, mix to mono, resample (soxr) and optionally trim one clip."""
    read = read_audio(blob)
    if isinstance(read, Rejection):
        return read
    data, rate, digest = read  # (frames, channels)
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
    return bad if bad is not None else DecodedClip(np.ascontiguousarray(wav, dtype=np.float32), rate, start, digest)


def decode_clip(blob: bytes | str | Path | EncodedAudio | None, settings: DecodeSettings) -> np.ndarray | Rejection:
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
            kept = {k: v for k, v in ev.items() if k != "sample_rate"}
            out.append({**kept, "start_sample": start, "end_sample": end})
    return out
