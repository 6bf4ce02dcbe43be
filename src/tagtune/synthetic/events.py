"""Procedural non-verbal events: giggles, laughs and sighs.

Each event is built so that it differs from speech and from the other kinds in ways a
detector (and a TTS model) can hear:

- giggle: 4-8 short (~65 ms) bursts, ~7 per second, pitch about twice the voice's, /i/ vowel;
- laugh: 3-6 longer (~150 ms) "ha" bursts, ~4.5 per second, an /h/ onset then an open /a/,
  pitch ~1.5x the voice's, fading over the laugh;
- sigh: 0.6-1.4 s of breathy noise with a sharp onset and a weak, falling voiced part.

Every event starts with its onset at sample 0 and ends with its last sound, so its position
in a clip is exactly the span it was spliced into.
"""

from __future__ import annotations

import numpy as np

from tagtune.synthetic.sourcefilter import HOP, active_rms, constant_track, render

EVENT_KINDS = ("giggle", "laugh", "sigh")
# tag spellings (as in Elise-style text) -> event kind
TAG_KINDS = {
    "giggle": "giggle", "giggles": "giggle",
    "laugh": "laugh", "laughs": "laugh", "chuckle": "laugh", "chuckles": "laugh",
    "sigh": "sigh", "sighs": "sigh",
}
# event loudness relative to the speech around it (active-frame RMS ratio)
EVENT_LEVEL = {"giggle": 0.8, "laugh": 1.0, "sigh": 0.45}

GIGGLE_BURSTS = (4, 8)
GIGGLE_RATE_HZ = 7.0
GIGGLE_BURST_S = 0.065
GIGGLE_PITCH = 2.1  # x voice f0
VOWEL_I = (300.0, 2300.0, 3000.0)

LAUGH_BURSTS = (3, 6)
LAUGH_RATE_HZ = 4.5
LAUGH_BURST_S = 0.15
LAUGH_H_S = 0.03  # aspirated onset of each "ha"
LAUGH_PITCH = 1.5
VOWEL_A = (800.0, 1250.0, 2600.0)

SIGH_SECONDS = (0.6, 1.4)
SIGH_ATTACK_S = 0.015
SIGH_VOICED_SPAN = (0.2, 0.85)  # fraction of the sigh carrying the falling voice
SIGH_PITCH = (1.1, 0.6)  # start/end of the fall, x voice f0
BREATH_BAND = (350.0, 5000.0)

ATTACK_S = 0.005
JITTER = 0.15  # +-15 % on burst periods and lengths


def _raised_envelope(n: int, attack: int, release: int) -> np.ndarray:
    """Linear attack, flat top, raised-cosine release; length n."""
    env = np.ones(n)
    attack, release = min(attack, n), min(release, n)
    env[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
    if release:
        env[n - release :] *= 0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, release)))
    return env


def _burst_times(rng: np.random.Generator, sr: int, n: int, rate: float, length_s: float):
    """Start sample and length of n bursts at ``rate`` per second, jittered."""
    periods = rng.uniform(1 - JITTER, 1 + JITTER, n) / rate
    starts = np.concatenate([[0.0], np.cumsum(periods[:-1])])
    lengths = length_s * rng.uniform(1 - JITTER, 1 + JITTER, n)
    return (starts * sr).astype(int), (lengths * sr).astype(int)


def _bursts(rng, sr, n, rate, length_s, f0, vowel, h_onset_s, gains) -> np.ndarray:
    """Shared giggle/laugh renderer: voiced bursts with an optional aspirated onset."""
    starts, lengths = _burst_times(rng, sr, n, rate, length_s)
    total = int(starts[-1] + lengths[-1])
    n_frames = total // HOP + 2
    track = constant_track(n_frames, f0, vowel, voiced=1.0, noise=0.12, band=BREATH_BAND)
    # pitch slides down ~20 % across the event, with a slight wobble
    track.f0 = f0 * np.linspace(1.0, 0.8, n_frames) * (1 + 0.04 * np.sin(np.arange(n_frames) / 3.0))
    h_frames = int(h_onset_s * sr) // HOP
    for start in starts // HOP if h_frames else ():
        # /h/: mostly breath, a trace of voice, before the vowel of each burst
        track.voiced[start : start + h_frames + 1], track.noise[start : start + h_frames + 1] = 0.1, 0.5
    sound = render(track, rng, sr)[:total]
    envelope = np.zeros(total)
    for start, length, gain in zip(starts, lengths, gains):
        burst = _raised_envelope(length, int(ATTACK_S * sr), int(0.4 * length))
        envelope[start : start + length] = gain * burst
    return sound * envelope


def giggle(rng: np.random.Generator, sr: int, f0: float = 220.0) -> np.ndarray:
    """4-8 short high-pitched /i/ bursts at ~7 per second (unnormalised)."""
    n = int(rng.integers(GIGGLE_BURSTS[0], GIGGLE_BURSTS[1] + 1))
    gains = rng.uniform(0.75, 1.0, n)
    gains[0] = 1.0  # a full-strength first burst makes the onset unmistakable
    pitch = f0 * GIGGLE_PITCH * rng.uniform(0.92, 1.08)
    return _bursts(rng, sr, n, GIGGLE_RATE_HZ, GIGGLE_BURST_S, pitch, VOWEL_I, 0.0, gains)


def laugh(rng: np.random.Generator, sr: int, f0: float = 220.0) -> np.ndarray:
    """3-6 "ha" bursts (/h/ then /a/) at ~4.5 per second, fading (unnormalised)."""
    n = int(rng.integers(LAUGH_BURSTS[0], LAUGH_BURSTS[1] + 1))
    gains = np.linspace(1.0, 0.6, n) * rng.uniform(0.9, 1.0, n)
    pitch = f0 * LAUGH_PITCH * rng.uniform(0.92, 1.08)
    return _bursts(rng, sr, n, LAUGH_RATE_HZ, LAUGH_BURST_S, pitch, VOWEL_A, LAUGH_H_S, gains)


def sigh(rng: np.random.Generator, sr: int, f0: float = 220.0) -> np.ndarray:
    """0.6-1.4 s breathy exhalation, sharp onset, weak falling voice (unnormalised)."""
    total = int(rng.uniform(*SIGH_SECONDS) * sr)
    n_frames = total // HOP + 2
    track = constant_track(n_frames, f0, VOWEL_A, voiced=0.0, noise=1.0, band=BREATH_BAND)
    # the exhalation fades from the onset to a quarter of its strength
    track.noise = np.linspace(1.0, 0.25, n_frames)
    first, last = (int(n_frames * f) for f in SIGH_VOICED_SPAN)
    span = last - first
    track.voiced[first:last] = 0.3 * np.sin(np.linspace(0.0, np.pi, span))
    track.f0[first:last] = f0 * np.linspace(SIGH_PITCH[0], SIGH_PITCH[1], span)
    # the vowel closes from /a/ toward a neutral /ə/ as the breath runs out
    track.formants[:, 0] = np.linspace(VOWEL_A[0], 550.0, n_frames)
    sound = render(track, rng, sr)[:total]
    return sound * _raised_envelope(total, int(SIGH_ATTACK_S * sr), int(0.25 * total))


EVENT_MAKERS = {"giggle": giggle, "laugh": laugh, "sigh": sigh}


def make_event(kind: str, rng: np.random.Generator, sr: int, loudness: float, f0: float = 220.0) -> np.ndarray:
    """Synthesize one event as float32 mono audio at ``sr``.

    ``kind`` is an event kind ("giggle", "laugh", "sigh") or a tag spelling ("laughs", ...).
    ``loudness`` is the target RMS over the event's sounding frames (pauses between bursts
    do not count), so an event can be matched to the speech RMS around it.
    ``f0`` is the voice's typical pitch; events are pitched relative to it.
    """
    resolved = TAG_KINDS.get(kind, kind)
    if resolved not in EVENT_MAKERS:
        raise ValueError(f"unknown event kind {kind!r}; known: {sorted(TAG_KINDS)}")
    sound = EVENT_MAKERS[resolved](rng, sr, f0)
    level = active_rms(sound)
    scale = loudness / level if level > 0 else 0.0
    return (sound * scale).astype(np.float32)
