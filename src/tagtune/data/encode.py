"""The model-facing half of preparation: text -> token ids + tags, waveform -> log-mel + DVAE codes.

Both encoders are injected into :func:`tagtune.data.prepare.prepare` through the two protocols below, so
the pipeline can be tested with tiny models and run with the real DVAE / tag-aware tokenizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from tagtune.data.decode import Rejection

EMPTY_TEXT = "empty_text"
UNDECODABLE_TEXT = "undecodable_text"
UNKNOWN_PIECES = "unknown_pieces"
TEXT_TOO_LONG = "text_too_long"
UNENCODABLE_TEXT = "unencodable_text"
BAD_RECORD = "bad_record"
REPLACEMENT_CHAR = "\ufffd"  # what a lossy decoder left behind: the original bytes are gone
# A text token covers a few characters (a tag up to ~20); a transcript longer than this many characters per
# allowed token cannot fit, and normalising a huge one costs minutes and gigabytes, so it is refused unread.
MAX_CHARS_PER_TEXT_TOKEN = 8


@dataclass
class EncodedText:
    """A transcript as the GPT sees it."""

    ids: list[int]
    tags: list[str] = field(default_factory=list)  # canonical tag names found in the text, in order
    has_unk: bool = False  # some piece mapped to <unk>
    normalized: str = ""
    text: str = ""  # the cleaned transcript it came from (filled by encode_text)


class TextEncoder(Protocol):
    """Text -> :class:`EncodedText` with the tag-extended tokenizer. ``identity`` enters the fingerprint."""

    identity: str

    def __call__(self, text: str) -> EncodedText: ...


class ClipEncoder(Protocol):
    """Waveforms (N,) float32 at 24 kHz -> per clip (log-mel (n_mels, T) float32 CPU, codes (T_c,) int64)."""

    identity: str

    def encode(self, wavs: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


def clean_text(raw: Any) -> str | Rejection:
    """Decode and strip a transcript, rejecting empty and undecodable ones."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection(UNDECODABLE_TEXT, f"not UTF-8: {e.reason} at byte {e.start}")
    if raw is None or not isinstance(raw, str):
        return Rejection(EMPTY_TEXT, f"no text ({type(raw).__name__})")
    try:
        raw.encode("utf-8")  # lone surrogates: bytes that were not UTF-8 in a text file
    except UnicodeEncodeError as e:
        return Rejection(UNDECODABLE_TEXT, f"not UTF-8 at character {e.start}")
    if REPLACEMENT_CHAR in raw:
        return Rejection(UNDECODABLE_TEXT, "contains U+FFFD replacement characters")
    text = " ".join(raw.split())
    return text if text else Rejection(EMPTY_TEXT, "empty or whitespace only")


def max_text_chars(max_text_tokens: int) -> int:
    """The longest transcript (in characters, after whitespace is collapsed) worth tokenizing."""
    return max_text_tokens * MAX_CHARS_PER_TEXT_TOKEN


def encode_text(raw: Any, encoder: TextEncoder, max_text_tokens: int) -> EncodedText | Rejection:
    """Clean, tokenize and check one transcript against the model's text limit.

    A transcript longer than ``max_text_chars(max_text_tokens)`` is rejected before normalisation.
    """
    text = clean_text(raw)
    if isinstance(text, Rejection):
        return text
    if len(text) > (limit := max_text_chars(max_text_tokens)):
        return Rejection(TEXT_TOO_LONG, f"{len(text)} characters > {limit} ({MAX_CHARS_PER_TEXT_TOKEN} per token "
                                        f"of max_text_tokens {max_text_tokens})")
    try:
        enc = dataclasses.replace(encoder(text), text=text)
    except (ValueError, RuntimeError) as e:  # unknown tag, normaliser failure, a tag lost in tokenization
        return Rejection(UNENCODABLE_TEXT, f"{type(e).__name__}: {e}"[:200])
    if not enc.ids:
        return Rejection(EMPTY_TEXT, "no tokens after normalisation")
    if enc.has_unk:
        return Rejection(UNKNOWN_PIECES, f"<unk> pieces remain in {enc.normalized or text!r}"[:200])
    if len(enc.ids) > max_text_tokens:
        return Rejection(TEXT_TOO_LONG, f"{len(enc.ids)} tokens > max_text_tokens {max_text_tokens}")
    return enc


class DVAEClipEncoder:
    """Log-mel on the CPU in fp32 (as the official reference path), DVAE codes batched on ``device``.

    Clips are sorted by length and right-padded; the DVAE masks each row to its own length
    (``get_codebook_indices(mel, mel_lengths)``), so codes do not depend on which clips share a batch.
    """

    def __init__(self, mel_fn: Callable[[torch.Tensor], torch.Tensor], dvae: torch.nn.Module,
                 device: torch.device | str = "cpu", batch_size: int = 16, identity: str = "dvae"):
        self.mel_fn, self.device, self.batch_size, self.identity = mel_fn, torch.device(device), batch_size, identity
        self.dvae = dvae.to(self.device).eval()

    @torch.no_grad()
    def mel(self, wav: np.ndarray) -> torch.Tensor:
        """(N,) waveform -> (n_mels, T) log-mel."""
        return self.mel_fn(torch.from_numpy(np.ascontiguousarray(wav))[None].float())[0].float().cpu()

    @torch.no_grad()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Mel + codes for each waveform, in input order."""
        mels = [self.mel(w) for w in wavs]
        order = sorted(range(len(mels)), key=lambda i: mels[i].shape[-1])
        codes: list[torch.Tensor | None] = [None] * len(mels)
        for s in range(0, len(order), self.batch_size):
            part = order[s : s + self.batch_size]
            lengths = torch.tensor([mels[i].shape[-1] for i in part])
            batch = torch.zeros(len(part), mels[part[0]].shape[0], int(lengths.max()))  # (B, n_mels, T_max)
            for row, i in enumerate(part):
                batch[row, :, : lengths[row]] = mels[i]
            out = self.dvae.get_codebook_indices(batch.to(self.device), lengths.to(self.device)).cpu()  # (B, T_c)
            n_codes = self.dvae.code_lengths(lengths)
            for row, i in enumerate(part):
                codes[i] = out[row, : n_codes[row]].long()
        return list(zip(mels, codes))
