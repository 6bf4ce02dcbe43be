"""What every judge reads and returns, and the three questions as interfaces any backend can answer.

    events   EventJudge.events(speech)            -> events found in each clip (tag, onset, end, confidence)
    words    WordsJudge.transcribe(speech, lang)  -> the words heard in each clip
    voice    VoiceJudge.similarity(speech, refs)  -> cosine of the clip's and its reference's speaker embeddings

A backend is any object with the method; the shipped ones are in ``events.py``, ``words.py``, ``voice.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from tagtune.audio import SAMPLE_RATE, SAMPLES_PER_CODE

JUDGE_NAMES = ("events", "words", "voice")
SECONDS_PER_CODE = SAMPLES_PER_CODE / SAMPLE_RATE


@dataclass
class Speech:
    """One clip to judge: mono float audio (24 kHz from 1.x, 22.05 kHz from IndexTTS-2), and the codes it was
    made from when known."""

    audio: np.ndarray  # (N,) float32 in [-1, 1] at ``rate``
    rate: int = SAMPLE_RATE
    codes: torch.Tensor | None = None  # (n_codes,) for code-level judges
    seconds_per_code: float = SECONDS_PER_CODE  # IndexTTS-2's semantic codes: 0.02

    @property
    def seconds(self) -> float:
        """Duration: of the codes when the clip is judged by its codes, else of the audio."""
        if self.codes is not None:
            return len(self.codes) * self.seconds_per_code
        return len(self.audio) / self.rate


@dataclass(frozen=True)
class Event:
    """An event a judge found in a clip."""

    tag: str  # canonical tag, e.g. "<laughs>"
    onset_s: float
    end_s: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Expected:
    """Where a tag in the prompt asks for its event to start."""

    tag: str
    onset_s: float


class EventJudge(Protocol):
    name: str
    tags: list[str]  # the tags this judge can hear

    def events(self, clips: list[Speech]) -> list[list[Event]]: ...


class WordsJudge(Protocol):
    name: str

    def transcribe(self, clips: list[Speech], language: str) -> list[str]: ...


class VoiceJudge(Protocol):
    name: str

    def similarity(self, clips: list[Speech], references: list[Speech]) -> list[float]: ...


def resample_to(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float audio at ``target`` Hz (soxr), as the judges' feature extractors expect."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.float32), rate, target, quality="HQ").astype(np.float32)
