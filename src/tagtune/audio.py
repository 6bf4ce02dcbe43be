"""Audio in, features out: decoding, mono, resampling to 24 kHz and the 100-band log-mel of IndexTTS.

Audio out: ``write_wav`` writes int16 samples as a 16-bit PCM wav, atomically.

Reading is bounded: ``audio_info`` reads only the header, ``load_audio(max_seconds=...)`` decodes only the
start of a file, and rates, channel counts and signals no speech recording has (NaN/inf, silence) are refused
with an ``AudioError`` naming the problem.

Everything here reproduces the official reference path (``torchaudio.load`` -> channel mean ->
``torchaudio.transforms.Resample(sr, 24000)`` -> ``MelSpectrogramFeatures``) without torchaudio: the
sinc resampler and the HTK filterbank are written out below from their definitions.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from tagtune.atomic import atomic_write_bytes
from tagtune.errors import UserError

SAMPLE_RATE = 24000
N_FFT = 1024
WIN_LENGTH = 1024
HOP = 256
N_MELS = 100
MEL_FMIN = 0.0
LOG_FLOOR = 1e-7  # ln(max(x, 1e-7)): the official "safe_log" clip
FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 93.75
SAMPLES_PER_CODE = 4 * HOP  # one DVAE code per 4 mel frames (the GPT config's mel_length_compression)


def code_span(start_sample: int, end_sample: int, n_codes: int,
              samples_per_code: int = SAMPLES_PER_CODE) -> tuple[int, int]:
    """Codes [first, last) overlapping samples [start_sample, end_sample), clipped to the clip's codes
    (``samples_per_code``: 1024 for DVAE codes, 480 for IndexTTS-2's semantic codes)."""
    first = max(0, start_sample // samples_per_code)
    last = min(n_codes, -(-end_sample // samples_per_code))
    return first, max(first, last)


def event_samples(event: dict) -> tuple[int, int]:
    """An event's recorded boundaries in 24 kHz samples (they may name their own ``sample_rate``)."""
    scale = SAMPLE_RATE / float(event.get("sample_rate", SAMPLE_RATE))
    return int(round(event["start_sample"] * scale)), int(round(event["end_sample"] * scale))


def event_onset_codes(events: list[dict] | None, tagged: bool, samples_per_code: int = SAMPLES_PER_CODE) -> list[int]:
    """The first code of each tagged event of a clip from its recorded boundaries; none for an untagged clip."""
    if not tagged or not events:
        return []
    return sorted(event_samples(e)[0] // samples_per_code for e in events if e.get("tag"))


# torchaudio.transforms.Resample defaults (method "sinc_interp_hann")
RESAMPLE_LOWPASS_WIDTH = 6
RESAMPLE_ROLLOFF = 0.99
# decoded beyond a cut, so that resampling gives the samples before the cut as a whole decode would: the
# kernel reaches RESAMPLE_LOWPASS_WIDTH / RESAMPLE_ROLLOFF samples of the lower rate each way (1.5 ms at 4 kHz)
RESAMPLE_LOOKAHEAD_SECONDS = 0.05

# What a speech recording can be (the same bounds as corpus preparation's)
MIN_SAMPLE_RATE = 4000  # below this a file is surely mislabelled
MAX_SAMPLE_RATE = 384000  # the highest rate real recorders write
MAX_CHANNELS = 8  # more than 7.1 surround is not a speech recording
SILENCE_PEAK = 1e-3  # -60 dBFS: a recording whose loudest sample is below this holds no speech
NON_FINITE_AUDIO = "non_finite_audio"  # reason codes of ``signal_problem`` (corpus rejections use them too)
SILENT_AUDIO = "silent_audio"

AudioSource = str | os.PathLike | bytes | bytearray


class AudioError(UserError, ValueError):
    """An audio file or buffer that cannot be used: unreadable, corrupt, empty or too short."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: frames per channel, sample rate, channels."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _open(source: AudioSource) -> tuple[str, object]:
    """(name for messages, what soundfile opens) of a path or raw bytes."""
    if isinstance(source, (bytes, bytearray)):
        return f"({len(source)} bytes)", io.BytesIO(source)
    name = os.fspath(source)
    if not os.path.isfile(name):
        raise AudioError(f"audio {name}: " + ("not a regular file" if os.path.exists(name) else "not found"))
    return name, name


def _decode_error(name: str, e: Exception) -> AudioError:
    """One line from libsndfile's own words (its messages name a BytesIO object's address otherwise)."""
    reason = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
    return AudioError(f"audio {name}: cannot decode ({' '.join(str(reason).split())})")


def check_format(name: str, sample_rate: int, channels: int) -> None:
    """Refuse rates and channel counts no speech recording has (AudioError naming ``name``)."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"audio {name}: sample rate {sample_rate} Hz is outside "
                         f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz")
    if channels > MAX_CHANNELS:
        raise AudioError(f"audio {name}: {channels} channels (at most {MAX_CHANNELS})")


def audio_info(source: AudioSource) -> AudioInfo:
    """Frames, rate and channels from the header alone; nothing is decoded."""
    name, handle = _open(source)
    try:
        info = sf.info(handle)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise _decode_error(name, e) from None
    check_format(name, int(info.samplerate), int(info.channels))
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def load_audio(source: AudioSource, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """Decode a wav/flac/ogg file (path or raw bytes) to float32 ``(C, N)`` in [-1, 1] and its sample rate.

    16-bit PCM decodes to int16 / 32768, the same values ``torchaudio.load`` returns. With ``max_seconds``
    only the first ``max_seconds`` are decoded, however long the file is.
    """
    name, handle = _open(source)
    try:
        with sf.SoundFile(handle) as f:
            check_format(name, f.samplerate, f.channels)
            frames = -1 if max_seconds is None else max(0, math.ceil(max_seconds * f.samplerate))
            data = f.read(frames, dtype="float32", always_2d=True)  # (N, C)
            sr = f.samplerate
    except (sf.SoundFileError, RuntimeError, OSError) as e:  # libsndfile: unknown format, bad header, ...
        raise _decode_error(name, e) from None
    if data.shape[0] == 0:
        raise AudioError(f"audio {name}: holds no samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def signal_problem(samples) -> tuple[str, str] | None:
    """(reason code, detail) when decoded samples cannot be a speech recording, else None.

    NaN/inf samples (a corrupt file) and silence (peak below ``SILENCE_PEAK``); ``samples`` is any array
    (numpy or a CPU tensor) of float samples.
    """
    x = np.asarray(samples)
    bad = int(x.size - np.isfinite(x).sum())
    if bad:
        return NON_FINITE_AUDIO, f"{bad} of {x.size} samples are NaN or infinite (a corrupt recording)"
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak < SILENCE_PEAK:
        return SILENT_AUDIO, f"silent (loudest sample {peak:.1e}, below {SILENCE_PEAK:g}, i.e. -60 dBFS)"
    return None


def check_signal(samples, name: str) -> None:
    """Raise AudioError naming ``name`` when ``signal_problem`` finds one."""
    problem = signal_problem(samples)
    if problem is not None:
        raise AudioError(f"audio {name}: {problem[1]}")


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Channel mean, ``(C, N) -> (1, N)``, as the official reference path does."""
    return wav.mean(dim=0, keepdim=True)


@lru_cache(maxsize=16)
def sinc_resample_kernel(orig_sr: int, new_sr: int) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel ``(new, 1, 2*width + orig)`` of torchaudio's default Resample.

    Rates are reduced by their gcd; row ``j`` is the filter for output phase ``j``. Built in float64 with the
    output phases in float32 first, the order of operations torchaudio uses, then cast to float32.
    """
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * RESAMPLE_ROLLOFF
    width = math.ceil(RESAMPLE_LOWPASS_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    phase = (torch.arange(0, -new, -1)[:, None, None] / new).double()  # (new, 1, 1), float32 values
    t = ((phase + idx) * base).clamp(-RESAMPLE_LOWPASS_WIDTH, RESAMPLE_LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / RESAMPLE_LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
    return kernel.float(), width


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis like ``torchaudio.transforms.Resample(orig_sr, new_sr)`` (identity if equal)."""
    if orig_sr == new_sr:
        return wav
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = sinc_resample_kernel(orig_sr, new_sr)
    shape = wav.shape
    flat = wav.reshape(-1, shape[-1])  # (R, N)
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernel.to(wav.dtype), stride=orig)  # (R, new, n_blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # phases interleaved in time
    target = math.ceil(new * shape[-1] / orig)
    return out[:, :target].reshape(*shape[:-1], -1)


def resample_soxr(wav: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Fast high-quality resampling of ``(C, N)`` audio with soxr, for corpus preparation.

    Not numerically equal to :func:`resample`; use that one where official parity matters.
    """
    if orig_sr == new_sr:
        return wav
    import soxr

    out = soxr.resample(wav.T.numpy(), orig_sr, new_sr, quality="HQ")  # (N', C)
    return torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))


def load_reference(source: AudioSource, max_seconds: float | None = None) -> torch.Tensor:
    """Reference audio as the official inference reads it: mono (channel mean), 24 kHz, ``(1, N)``.

    NaN/inf samples and silence are refused (AudioError). With ``max_seconds`` only the start of the file is
    decoded, a little more than ``max_seconds`` so that those come out as a whole decode gives them: cut the
    result to ``max_seconds`` afterwards.
    """
    head = None if max_seconds is None else max_seconds + RESAMPLE_LOOKAHEAD_SECONDS
    wav, sr = load_audio(source, max_seconds=head)
    check_signal(wav, _open(source)[0] if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    return resample(to_mono(wav), sr, SAMPLE_RATE)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK-scale filterbank ``(n_freqs, n_mels)`` without area normalisation (torchaudio's)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # (n_mels + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class MelSpectrogram(nn.Module):
    """Natural-log magnitude mel of 24 kHz audio: ``(..., N) -> (..., n_mels, N // hop + 1)``.

    Magnitude STFT (power 1) with a periodic Hann window and centred reflect padding, HTK filterbank
    from ``f_min`` to sr/2 with no area norm, then ``ln(max(x, 1e-7))``: ``MelSpectrogramFeatures``.

    With ``precise`` (default) the STFT runs in float64: quiet high bins of a loud frame carry fp32 FFT
    rounding of ~1e-3 after the log, in a direction that depends on the FFT kernel; float64 removes our
    share of it and lands within the official fp32 noise (about 1.1e-3). It costs ~60 % more STFT time.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop_length: int = HOP,
                 win_length: int | None = WIN_LENGTH, n_mels: int = N_MELS, f_min: float = MEL_FMIN,
                 precise: bool = True):
        super().__init__()
        self.precise = precise
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, sample_rate / 2)
        self.register_buffer("fb", fb, persistent=False)  # (n_freqs, n_mels)

    @classmethod
    def from_config(cls, mel) -> MelSpectrogram:
        """Build from a :class:`tagtune.config.MelConfig` (``normalize`` must be false, as in IndexTTS)."""
        if mel.normalize:
            raise ValueError("normalised mel spectrograms are not used by IndexTTS 1.x")
        return cls(mel.sample_rate, mel.n_fft, mel.hop_length, mel.win_length, mel.n_mels, mel.mel_fmin)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.shape[-1] <= self.n_fft // 2:  # reflect padding needs more samples than the pad
            raise AudioError(f"audio too short for a mel frame: {wav.shape[-1]} samples (need > {self.n_fft // 2})")
        lead = wav.shape[:-1]
        stft_dtype = torch.float64 if self.precise else wav.dtype
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]).to(stft_dtype), self.n_fft, self.hop_length,
                          self.win_length, self.window.to(stft_dtype), center=True, pad_mode="reflect",
                          return_complex=True).abs().to(self.fb.dtype)  # (R, F, T)
        mel = torch.matmul(spec.transpose(1, 2), self.fb).transpose(1, 2)  # (R, n_mels, T)
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).reshape(*lead, *mel.shape[1:])


def num_frames(num_samples: int, hop_length: int = HOP) -> int:
    """Mel frames produced for ``num_samples`` samples (centred STFT)."""
    return num_samples // hop_length + 1


def wav_bytes(audio, sample_rate: int) -> bytes:
    """int16 samples -> a 16-bit PCM mono wav file."""
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def write_wav(path: str | Path, audio, sample_rate: int) -> Path:
    """Write int16 samples atomically as a 16-bit PCM wav."""
    atomic_write_bytes(path, wav_bytes(audio, sample_rate))
    return Path(path)
