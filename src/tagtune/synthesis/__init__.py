"""Synthesis: the TTS object (``tts``), reference voices (``reference``), the reduced-precision GPT of the
fast path (``fast_gpt``) and command-line jobs (``jobs``: one text or a JSONL batch file -> wav files)."""

from tagtune.synthesis.reference import Reference, ReferenceAudioError, ReferenceCache
from tagtune.synthesis.tts import TTS, Synthesis, TextError

__all__ = ["TTS", "Reference", "ReferenceAudioError", "ReferenceCache", "Synthesis", "TextError"]
