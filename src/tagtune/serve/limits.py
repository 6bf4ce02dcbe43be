"""What the server accepts and how much it queues (plain values: the CLI builds one from its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from tagtune.synthesis.reference import MAX_REFERENCE_SECONDS
from tagtune.synthesis.tts import MAX_TEXT_CHARS


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how much the server queues."""

    max_text_chars: int = MAX_TEXT_CHARS
    max_reference_bytes: int = 10 * 2**20
    max_reference_seconds: float = MAX_REFERENCE_SECONDS
    max_voices: int = 64  # uploaded voices kept in memory
    max_active: int = 8  # requests decoding at once
    max_queue: int = 16  # requests waiting beyond those; more get 429
    request_timeout: float = 300.0  # seconds from arrival to the last sample
    shutdown_grace: float = 30.0  # seconds running requests get to finish on shutdown
