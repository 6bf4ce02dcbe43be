"""Source-filter rendering shared by the built-in voice and the event generators.

A sound is described at frame rate (one frame = ``HOP`` samples): f0, three formant
frequencies, a voiced gain, a noise gain and a noise pass-band.  A glottal pulse train and
white noise are shaped in the STFT domain by the per-frame spectral envelope and
overlap-added back, which costs a few FFTs instead of a per-sample IIR loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FFT = 512
HOP = 128
FORMANT_BANDWIDTHS = np.array([110.0, 150.0, 220.0])  # Hz, F1..F3
FORMANT_WEIGHTS = np.array([1.0, 0.55, 0.25])  # F2/F3 sit lower than F1 in natural vowels
TILT_HZ = 350.0  # voiced source roll-off (~ -6 dB/octave above this)
BAND_EDGE_HZ = 250.0  # softness of the noise pass-band edges
VOICED_CALIBRATION = 10.0  # makes voiced=1 about as loud as noise=1 (measured: pulses ~10x quieter)


@dataclass
class Track:
    """Per-frame synthesis parameters; every array has F rows (one per ``HOP`` samples)."""

    f0: np.ndarray  # (F,) Hz
    formants: np.ndarray  # (F, 3) Hz
    voiced: np.ndarray  # (F,) linear gain of the pulse train
    noise: np.ndarray  # (F,) linear gain of the noise
    band: np.ndarray  # (F, 2) noise pass-band [low, high] Hz

    @property
    def n_frames(self) -> int:
        """Number of frames F."""
        return len(self.f0)


def constant_track(n_frames: int, f0: float, formants, voiced: float, noise: float, band) -> Track:
    """A track holding the same values in every frame (callers then edit slices)."""
    return Track(
        f0=np.full(n_frames, float(f0)),
        formants=np.tile(np.asarray(formants, dtype=float), (n_frames, 1)),
        voiced=np.full(n_frames, float(voiced)),
        noise=np.full(n_frames, float(noise)),
        band=np.tile(np.asarray(band, dtype=float), (n_frames, 1)),
    )


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along the first axis with edge padding (coarticulation, no clicks)."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (x.ndim - 1)
    padded = np.pad(x, pad, mode="edge")
    if x.ndim == 1:
        return np.convolve(padded, kernel, mode="valid")
    return np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(x.shape[1])], axis=1)


def _pulse_train(f0_samples: np.ndarray, sr: int) -> np.ndarray:
    """Unit-power impulse train following a per-sample f0 contour."""
    phase = np.cumsum(f0_samples / sr)  # (T,) periods elapsed
    pulses = np.zeros_like(phase)
    ticks = np.nonzero(np.diff(np.floor(phase), prepend=0.0) > 0)[0]
    # sqrt(period) per pulse keeps the power independent of f0, like unit-variance noise
    pulses[ticks] = np.sqrt(sr / np.maximum(f0_samples[ticks], 1.0))
    return pulses


def _stft(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (J, N_FFT)
    return np.fft.rfft(frames * window, axis=1)  # (J, N_FFT/2+1)


def _overlap_add(frames: np.ndarray) -> np.ndarray:
    """Sum (J, N_FFT) frames placed HOP apart; N_FFT is a multiple of HOP."""
    k = N_FFT // HOP
    out = np.zeros((len(frames) + k - 1, HOP))
    for i in range(k):
        out[i : i + len(frames)] += frames[:, i * HOP : (i + 1) * HOP]
    return out.reshape(-1)


def _istft(spec: np.ndarray, window: np.ndarray, n: int) -> np.ndarray:
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * window  # (J, N_FFT)
    out = _overlap_add(frames)
    norm = _overlap_add(np.broadcast_to(window**2, frames.shape))
    out = out / np.maximum(norm, 1e-3)
    return out[N_FFT // 2 : N_FFT // 2 + n]


def _at_frames(values: np.ndarray, n_stft: int) -> np.ndarray:
    """Sample a per-frame track at the STFT frame centres (frame f spans [f*HOP, (f+1)*HOP))."""
    centres = (np.arange(len(values)) + 0.5) * HOP
    grid = np.arange(n_stft) * HOP
    if values.ndim == 1:
        return np.interp(grid, centres, values)
    return np.stack([np.interp(grid, centres, values[:, i]) for i in range(values.shape[1])], axis=1)


def _envelopes(track: Track, freqs: np.ndarray, n_stft: int) -> tuple[np.ndarray, np.ndarray]:
    """Voiced and noise spectral envelopes, each (J, bins)."""
    freqs = freqs.astype(np.float32)
    formants = _at_frames(track.formants, n_stft).astype(np.float32)[:, :, None]  # (J, 3, 1)
    width = (FORMANT_BANDWIDTHS / 2).astype(np.float32)[None, :, None]
    weights = FORMANT_WEIGHTS.astype(np.float32)[None, :, None]
    resonance = weights / (1.0 + np.square((freqs - formants) / width))  # (J, 3, bins)
    shape = resonance.sum(axis=1)  # (J, bins)
    tilt = 1.0 / (1.0 + freqs / TILT_HZ)  # (bins,)
    voiced = VOICED_CALIBRATION * _at_frames(track.voiced, n_stft)[:, None] * shape * tilt
    band = _at_frames(track.band, n_stft).astype(np.float32)  # (J, 2)
    rise = 1.0 / (1.0 + np.exp(-(freqs - band[:, :1]) / BAND_EDGE_HZ))
    fall = 1.0 / (1.0 + np.exp((freqs - band[:, 1:]) / BAND_EDGE_HZ))
    # noise keeps a hint of the formants so breath sounds like the vowel it belongs to
    noise = _at_frames(track.noise, n_stft)[:, None] * rise * fall * (0.35 + shape)
    return voiced, noise


def render(track: Track, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Render a track to ``n_frames * HOP`` float64 samples (arbitrary scale)."""
    n = track.n_frames * HOP
    f0_samples = np.interp(np.arange(n), (np.arange(track.n_frames) + 0.5) * HOP, track.f0)
    window = np.hanning(N_FFT + 1)[:-1]
    voiced_spec = _stft(_pulse_train(f0_samples, sr), window)
    # white noise has i.i.d. complex Gaussian STFT bins, so draw them directly (saves an FFT)
    scale = np.sqrt(np.sum(window**2))
    noise_spec = scale * (rng.standard_normal(voiced_spec.shape) + 1j * rng.standard_normal(voiced_spec.shape))
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
    env_voiced, env_noise = _envelopes(track, freqs, len(voiced_spec))
    return _istft(voiced_spec * env_voiced + noise_spec * env_noise, window, n)


def active_rms(x: np.ndarray, rel_floor: float = 0.1) -> float:
    """RMS over the frames louder than ``rel_floor`` times the loudest frame (ignores pauses)."""
    usable = len(x) // HOP * HOP
    if usable == 0:
        return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    frame_rms = np.sqrt(np.mean(np.square(x[:usable].reshape(-1, HOP)), axis=1))
    loud = frame_rms[frame_rms >= rel_floor * frame_rms.max()]
    return float(np.sqrt(np.mean(np.square(loud)))) if len(loud) else 0.0
