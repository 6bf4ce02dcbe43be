"""Audio front ends of IndexTTS2: prompt loading, the CAMPPlus fbank, the s2mel prompt mel, mel lengths.

IndexTTS2 reads its prompts on two paths, and the numbers differ between them:

- speaker prompt: decoded and resampled to 22.05 kHz the way ``librosa.load`` does (soxr, quality HQ), cut to
  15 s, then taken to 16 kHz with torchaudio's windowed-sinc ``Resample`` (:func:`tagtune.audio.resample`).
  The 22.05 kHz copy gives the s2mel prompt mel, the 16 kHz copy the w2v-BERT features and the CAMPPlus fbank.
- emotion prompt: decoded and resampled by soxr straight to 16 kHz, cut to 15 s.

The CAMPPlus features are Kaldi filterbanks (``torchaudio.compliance.kaldi.fbank`` semantics: 25 ms Povey
windows every 10 ms, DC removal, pre-emphasis 0.97, power spectrum, 80 triangular mel bins from 20 Hz, natural
log) minus their mean over time. The s2mel mel is HiFi-GAN's: reflect padding of (n_fft - hop) / 2, no
centring, magnitude with a 1e-9 floor inside the root, Slaney mel filters, ``log(max(x, 1e-5))``. Both are
written out below from their definitions; neither torchaudio nor librosa is needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from tagtune.audio import AudioError, AudioSource, check_signal, load_audio, resample, to_mono

S2MEL_SAMPLE_RATE = 22050  # the prompt mel, s2mel and BigVGAN v2
W2V_SAMPLE_RATE = 16000  # w2v-BERT features and the CAMPPlus fbank
PROMPT_MAX_SECONDS = 15  # prompts are cut to this length (the official ``_load_and_cut_audio(path, 15)``)
MIN_PROMPT_SECONDS = 0.1  # shorter prompts leave no frames for the mel, the fbank and w2v-BERT
# decoded past the cut: soxr's samples before the cut then equal those of a whole-file decode (checked bit for bit)
PROMPT_LOOKAHEAD_SECONDS = 1.0
MEL_FRAMES_PER_CODE = 1.72  # s2mel target mel frames per semantic code, applied in float32 and truncated

# s2mel prompt mel (config.yaml s2mel.preprocess_params; these are the official values)
MEL_N_FFT = 1024
MEL_HOP = 256
MEL_WIN = 1024
MEL_N_MELS = 80
MEL_FMIN = 0.0
MEL_LOG_FLOOR = 1e-5
MEL_MAGNITUDE_EPS = 1e-9  # added to re^2 + im^2 before the square root

# Kaldi fbank as CAMPPlus is fed (torchaudio.compliance.kaldi.fbank defaults, 80 bins, no dither)
FBANK_BINS = 80
FBANK_FRAME_MS = 25.0
FBANK_SHIFT_MS = 10.0
FBANK_PREEMPHASIS = 0.97
FBANK_POVEY_POWER = 0.85
FBANK_LOW_HZ = 20.0
FBANK_LOG_FLOOR = float(torch.finfo(torch.float32).eps)

SOXR_QUALITY = "HQ"  # librosa.load's default res_type "soxr_hq"


# ------------------------------------------------------------------------------------------ prompt audio


def soxr_resample(samples: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """1-D float32 samples resampled like ``librosa.resample(res_type="soxr_hq")``: soxr HQ, then zero-padded
    or cut to ``ceil(n * new / orig)`` samples."""
    if orig_sr == new_sr:
        return samples
    import soxr

    out = soxr.resample(samples, orig_sr, new_sr, quality=SOXR_QUALITY)
    size = math.ceil(samples.shape[-1] * new_sr / orig_sr)
    if out.shape[-1] < size:
        out = np.pad(out, (0, size - out.shape[-1]))
    return np.asarray(out[:size], dtype=np.float32)


def load_prompt(source: AudioSource, sample_rate: int = S2MEL_SAMPLE_RATE,
                max_seconds: float = PROMPT_MAX_SECONDS) -> torch.Tensor:
    """A prompt as the official ``_load_and_cut_audio`` reads it: mono, soxr-resampled, cut; ``(1, N)`` float32.

    Only the first ``max_seconds`` (and a lookahead) of a long file are decoded. NaN/inf samples and silence
    are refused with an AudioError naming the file.
    """
    wav, sr = load_audio(source, max_seconds=max_seconds + PROMPT_LOOKAHEAD_SECONDS)
    name = f"({len(source)} bytes)" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    check_signal(wav, name)
    if wav.shape[-1] < MIN_PROMPT_SECONDS * sr:
        raise AudioError(f"audio {name}: {wav.shape[-1] / sr:.3f} s is too short for a prompt "
                         f"(at least {MIN_PROMPT_SECONDS} s)")
    mono = to_mono(wav)[0].numpy()  # librosa's channel mean
    out = torch.from_numpy(soxr_resample(mono, sr, sample_rate).copy())[None]
    return out[:, : int(max_seconds * sample_rate)]


@dataclass(frozen=True)
class SpeakerPrompt:
    """The speaker prompt at both rates: ``audio_22k`` (1, N) for the mel, ``audio_16k`` (1, M) for features."""

    audio_22k: torch.Tensor
    audio_16k: torch.Tensor


def speaker_prompt(source: AudioSource, max_seconds: float = PROMPT_MAX_SECONDS) -> SpeakerPrompt:
    """Speaker path: soxr to 22.05 kHz, cut, then torchaudio-style sinc resampling to 16 kHz."""
    audio_22k = load_prompt(source, S2MEL_SAMPLE_RATE, max_seconds)
    return SpeakerPrompt(audio_22k, resample(audio_22k, S2MEL_SAMPLE_RATE, W2V_SAMPLE_RATE))


def emotion_prompt(source: AudioSource, max_seconds: float = PROMPT_MAX_SECONDS) -> torch.Tensor:
    """Emotion path: soxr straight to 16 kHz, cut; ``(1, N)``."""
    return load_prompt(source, W2V_SAMPLE_RATE, max_seconds)


# ------------------------------------------------------------------------------------------ Kaldi fbank


def _kaldi_mel(hz: torch.Tensor | float):
    return 1127.0 * (1.0 + hz / 700.0).log() if isinstance(hz, torch.Tensor) else 1127.0 * math.log(1.0 + hz / 700.0)


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_hz: float) -> torch.Tensor:
    """Kaldi's triangular mel filters on the mel axis, ``(num_bins, padded_window // 2 + 1)`` float32.

    The last column (the Nyquist bin) is zero, as in Kaldi. Built in float32 like torchaudio's ``get_mel_banks``.
    """
    high_hz = 0.5 * sample_rate
    mel_low, mel_high = _kaldi_mel(low_hz), _kaldi_mel(high_hz)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins)[:, None]
    left = mel_low + b * delta  # (num_bins, 1)
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _kaldi_mel(sample_rate / padded_window * torch.arange(padded_window / 2))[None]  # (1, F - 1)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(wav: torch.Tensor, sample_rate: int = W2V_SAMPLE_RATE, num_bins: int = FBANK_BINS) -> torch.Tensor:
    """``torchaudio.compliance.kaldi.fbank(wav, num_mel_bins, dither=0, sample_frequency)``: ``(1, N) -> (T, bins)``.

    Frames of 25 ms every 10 ms with snip_edges (the last partial frame is dropped), each with its mean
    removed, pre-emphasised, Povey-windowed, zero-padded to a power of two; log mel power, floored at fp32 eps.
    """
    x = wav[0] if wav.dim() == 2 else wav
    size = int(sample_rate * FBANK_FRAME_MS / 1000)
    shift = int(sample_rate * FBANK_SHIFT_MS / 1000)
    if x.shape[-1] < size:
        return torch.empty(0, num_bins, dtype=x.dtype)
    frames = x.unfold(0, size, shift)  # (T, size)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[j-1], x[0] repeated at the left edge
    frames = frames - FBANK_PREEMPHASIS * previous
    window = torch.hann_window(size, periodic=False, dtype=x.dtype).pow(FBANK_POVEY_POWER)
    padded = 1 << (size - 1).bit_length()
    frames = torch.nn.functional.pad(frames * window, (0, padded - size))
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (T, padded // 2 + 1)
    banks = kaldi_mel_banks(num_bins, padded, float(sample_rate), FBANK_LOW_HZ).to(x.dtype)
    mel = torch.mm(power, banks.T)
    return torch.clamp(mel, min=FBANK_LOG_FLOOR).log()


def campplus_features(wav_16k: torch.Tensor) -> torch.Tensor:
    """What CAMPPlus is given: the Kaldi fbank minus its mean over time, ``(1, N) -> (1, T, 80)``."""
    feat = kaldi_fbank(wav_16k)
    return (feat - feat.mean(dim=0, keepdim=True))[None]


# ------------------------------------------------------------------------------------------ s2mel mel


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic (27 mels per 6.4x) above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    mel[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    hz = f_sp * mel
    above = mel >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mel[above] - min_log_mel))
    return hz


@lru_cache(maxsize=8)
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (Slaney scale and area norm): ``(n_mels, n_fft//2+1)``.

    Computed in float64 and stored in float32 at the points librosa stores them.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(np.array([fmin], dtype=np.float64))[0],
                                          _hz_to_slaney_mel(np.array([fmax], dtype=np.float64))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    weights = np.zeros((n_mels, fft_hz.shape[0]), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights)


class PromptMel(nn.Module):
    """The s2mel log-mel of 22.05 kHz audio: ``(B, N) -> (B, n_mels, N // hop)`` (for N >= hop).

    Reflect-pads (n_fft - hop) / 2 samples each side, then a non-centred fp32 STFT (as the official one; on
    the fixture's references this is bit-identical to it).
    """

    def __init__(self, sample_rate: int = S2MEL_SAMPLE_RATE, n_fft: int = MEL_N_FFT, hop_length: int = MEL_HOP,
                 win_length: int = MEL_WIN, n_mels: int = MEL_N_MELS, fmin: float = MEL_FMIN,
                 fmax: float | None = None):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer("filters", slaney_mel_filters(sample_rate, n_fft, n_mels, fmin, fmax).clone(),
                             persistent=False)

    @classmethod
    def from_config(cls, preprocess) -> PromptMel:
        """From ``s2mel.preprocess_params`` (:class:`tagtune.config.PreprocessConfig`)."""
        spect = preprocess.spect_params
        return cls(preprocess.sr, spect.n_fft, spect.hop_length, spect.win_length, spect.n_mels, spect.fmin,
                   spect.fmax_hz)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        pad = (self.n_fft - self.hop_length) // 2
        x = torch.nn.functional.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]  # (B, N + 2 pad)
        spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length, self.window, center=False,
                          return_complex=True)
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MEL_MAGNITUDE_EPS)  # (B, F, T)
        mel = torch.matmul(self.filters, magnitude)
        return torch.log(torch.clamp(mel, min=MEL_LOG_FLOOR))


def mel_frames_for_codes(code_lens: torch.Tensor) -> torch.Tensor:
    """Target mel frames of s2mel for a number of semantic codes: ``(code_lens * 1.72).long()`` in float32."""
    return (code_lens.to(torch.float32) * torch.tensor(MEL_FRAMES_PER_CODE, dtype=torch.float32)).long()
