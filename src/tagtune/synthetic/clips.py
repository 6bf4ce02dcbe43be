"""Assembling one clip: speech pieces and event sounds laid end to end, events recorded.

Speech arrives trimmed; the clip adds a short lead-in, gaps between parts and a tail, so
every event span is bounded by a (near) silent gap on both sides and starts with its onset.
The speech level of each clip is randomised, events follow it, and a faint noise floor
keeps pauses from being digital silence.
"""

from __future__ import annotations

import numpy as np

from tagtune.synthetic.events import EVENT_LEVEL, TAG_KINDS, make_event
from tagtune.synthetic.script import ClipPlan
from tagtune.synthetic.sourcefilter import active_rms
from tagtune.synthetic.voices import Voice

EDGE_SILENCE_S = (0.1, 0.25)  # lead-in and tail
GAP_S = (0.06, 0.2)  # between consecutive parts
SPEECH_DBFS = (-23.0, -17.0)  # active-frame RMS of the speech after the clip gain
EVENT_LEVEL_JITTER = (0.8, 1.25)
NOISE_FLOOR = 3e-4  # ~ -70 dBFS
PEAK_LIMIT = 0.97
DEFAULT_SPEECH_RMS = 0.08  # for a clip that is all events


def _silence(rng: np.random.Generator, sr: int, seconds: tuple[float, float]) -> np.ndarray:
    return np.zeros(int(rng.uniform(*seconds) * sr), dtype=np.float32)


def _pieces(plan: ClipPlan, speech: list[np.ndarray], voice: Voice, level: float, rng, sr):
    """(tag or None, audio) for every part; events are rendered relative to ``level``."""
    spoken = iter(speech)
    pieces = []
    for kind, value in plan.parts:
        if kind == "speech":
            pieces.append((None, next(spoken)))
            continue
        event_kind = TAG_KINDS[value]
        loudness = level * EVENT_LEVEL[event_kind] * rng.uniform(*EVENT_LEVEL_JITTER)
        pieces.append((value, make_event(event_kind, rng, sr, loudness, f0=voice.f0)))
    return pieces


def _lay_out(pieces, rng, sr) -> tuple[np.ndarray, list[dict]]:
    """Concatenate pieces with silences between them; record each event's span."""
    chunks, events = [_silence(rng, sr, EDGE_SILENCE_S)], []
    cursor = len(chunks[0])
    for i, (tag, audio) in enumerate(pieces):
        if i:
            chunks.append(_silence(rng, sr, GAP_S))
            cursor += len(chunks[-1])
        if tag is not None:
            events.append({"tag": tag, "start_sample": cursor, "end_sample": cursor + len(audio)})
        chunks.append(audio)
        cursor += len(audio)
    chunks.append(_silence(rng, sr, EDGE_SILENCE_S))
    return np.concatenate(chunks), events


def assemble_clip(plan: ClipPlan, speech: list[np.ndarray], voice: Voice, rng: np.random.Generator, sr: int):
    """Lay out one clip.

    ``speech`` holds the audio of the plan's speech parts in order (float32 at ``sr``).
    Returns (int16 samples (T,), events ``[{tag, start_sample, end_sample}]``).
    """
    level = active_rms(np.concatenate(speech)) if speech else DEFAULT_SPEECH_RMS
    clip, events = _lay_out(_pieces(plan, speech, voice, level, rng, sr), rng, sr)
    gain = 10 ** (rng.uniform(*SPEECH_DBFS) / 20) / max(level, 1e-6)
    gain = min(gain, PEAK_LIMIT / max(float(np.max(np.abs(clip))), 1e-6))
    clip = clip * np.float32(gain) + NOISE_FLOOR * rng.standard_normal(len(clip), dtype=np.float32)
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16), events
