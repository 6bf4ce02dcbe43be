"""The built-in speech engine: letter-driven source-filter "babble" in pure numpy.

Not intelligible, but it has what a TTS fine-tune needs from speech: each letter becomes a
vowel, fricative, plosive, nasal or liquid with its own spectrum; words get a stress accent
chosen by a stable hash of the word; phrases have falling (or, for questions, rising)
intonation; and the duration grows with the text.  The same text and voice always give
the same samples.  Characters outside a-z (digits, Hanzi) map to a letter by code point.
"""

from __future__ import annotations

import zlib

import numpy as np

from tagtune.synthetic.sourcefilter import Track, render, smooth
from tagtune.synthetic.voices import Voice

VOWELS = {
    "a": (730.0, 1090.0, 2440.0), "e": (530.0, 1840.0, 2480.0), "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0), "u": (300.0, 870.0, 2240.0), "y": (400.0, 1900.0, 2600.0),
}
# consonant: (voiced gain, noise gain, noise band low/high Hz, formants Hz)
NEUTRAL = (500.0, 1500.0, 2500.0)
CONSONANTS = {
    "s": (0.0, 0.9, (3800.0, 8000.0), NEUTRAL), "z": (0.3, 0.7, (3800.0, 8000.0), NEUTRAL),
    "c": (0.0, 0.8, (3000.0, 7000.0), NEUTRAL), "x": (0.0, 0.8, (2500.0, 7000.0), NEUTRAL),
    "j": (0.3, 0.6, (2000.0, 6000.0), NEUTRAL), "f": (0.0, 0.4, (1500.0, 7500.0), NEUTRAL),
    "v": (0.4, 0.3, (1500.0, 7000.0), NEUTRAL), "h": (0.0, 0.45, (400.0, 5000.0), NEUTRAL),
    "m": (0.55, 0.0, (0.0, 0.0), (250.0, 1100.0, 2300.0)), "n": (0.55, 0.0, (0.0, 0.0), (250.0, 1600.0, 2600.0)),
    "l": (0.7, 0.0, (0.0, 0.0), (360.0, 1300.0, 2700.0)), "r": (0.7, 0.0, (0.0, 0.0), (420.0, 1300.0, 1600.0)),
    "w": (0.7, 0.0, (0.0, 0.0), (300.0, 700.0, 2300.0)),
}
PLOSIVES = {  # burst band per place of articulation; b/d/g are voiced
    "p": (500.0, 2000.0), "b": (500.0, 2000.0), "t": (3000.0, 7000.0), "d": (3000.0, 7000.0),
    "k": (1500.0, 4000.0), "g": (1500.0, 4000.0), "q": (1500.0, 4000.0),
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PAUSES = {",": 30, ";": 35, ":": 35, ".": 55, "!": 55, "?": 55}  # frames (~5.3 ms each)
VOWEL_FRAMES, CONSONANT_FRAMES, CLOSURE_FRAMES, BURST_FRAMES, SPACE_FRAMES = 15, 10, 6, 4, 5
STRESS_STRETCH = 1.4
ACCENT_RANGE = (0.08, 0.22)  # f0 bump of a stressed vowel, fraction of the voice's f0
DECLINATION = (1.12, 0.85)  # f0 at phrase start/end
QUESTION_RISE = 1.3
SMOOTH_FRAMES = 5


def _letter_of(char: str) -> str:
    """A letter for any character, so digits and Hanzi babble too."""
    low = char.lower()
    return low if low in LETTERS else LETTERS[ord(char) % len(LETTERS)]


def _segments(letter: str, stressed: bool):
    """(frames, voiced, noise, band, formants) pieces for one letter."""
    if letter in VOWELS:
        n = int(VOWEL_FRAMES * (STRESS_STRETCH if stressed else 1.0))
        return [(n, 1.0, 0.0, (0.0, 0.0), VOWELS[letter])]
    if letter in PLOSIVES:
        voicing = 0.25 if letter in "bdg" else 0.0
        burst = (BURST_FRAMES, voicing, 1.0, PLOSIVES[letter], NEUTRAL)
        return [(CLOSURE_FRAMES, voicing, 0.0, (0.0, 0.0), NEUTRAL), burst]
    voiced, noise, band, formants = CONSONANTS[letter]
    return [(CONSONANT_FRAMES, voiced, noise, band, formants)]


def _word_accent(word: str) -> tuple[int, float]:
    """Stable (stressed vowel index, accent height) for a word."""
    digest = zlib.crc32(word.lower().encode("utf-8"))
    return digest % 2, ACCENT_RANGE[0] + (digest >> 8) % 100 / 100 * (ACCENT_RANGE[1] - ACCENT_RANGE[0])


def _word_pieces(word: str) -> list[tuple]:
    """Pieces of one word, each (frames, voiced, noise, band, formants, accent)."""
    stress_index, accent = _word_accent(word)
    pieces, vowel_count = [], 0
    for char in word:
        letter = _letter_of(char)
        stressed = letter in VOWELS and vowel_count == stress_index
        vowel_count += letter in VOWELS
        pieces += [(*seg, accent if stressed else 0.0) for seg in _segments(letter, stressed)]
    return pieces


def _pieces(text: str) -> list[tuple]:
    """Pieces of a whole text: words, word gaps and punctuation pauses."""
    pieces, word = [], ""
    silence = (0.0, 0.0, (0.0, 0.0), NEUTRAL, 0.0)
    for char in text + " ":
        if char.isspace() or char in PAUSES:
            pieces += _word_pieces(word) if word else []
            word = ""
            gap = PAUSES.get(char, SPACE_FRAMES)
            pieces.append((gap, *silence))
        elif char.isalnum() or ord(char) > 127:
            word += char
    return pieces


def _track(pieces: list[tuple], voice: Voice, question: bool) -> Track:
    """Expand pieces to per-frame parameters, smoothed for coarticulation."""
    counts = [max(1, round(p[0] / voice.rate)) for p in pieces]
    rows = np.repeat(np.arange(len(pieces)), counts)  # (F,) piece index per frame
    voiced = np.array([p[1] for p in pieces])[rows]
    noise = np.array([p[2] for p in pieces])[rows] + voice.breath * (voiced > 0.5)
    band = np.array([p[3] for p in pieces])[rows]
    band[band[:, 1] == 0] = (400.0, 5000.0)  # breath on vowels spans the mid band
    formants = np.array([p[4] for p in pieces])[rows] * voice.formant_scale
    accent = np.array([p[5] for p in pieces])[rows]
    contour = np.linspace(*DECLINATION, len(rows)) * (1.0 + accent)
    if question:  # a rise over the last fifth
        tail = len(rows) // 5
        contour[-tail:] *= np.linspace(1.0, QUESTION_RISE, tail)
    return Track(
        f0=smooth(voice.f0 * contour, SMOOTH_FRAMES * 2),
        formants=smooth(formants, SMOOTH_FRAMES),
        voiced=smooth(voiced, 3),
        noise=smooth(noise, 2),
        band=band,
    )


def babble(text: str, voice: Voice, sr: int) -> np.ndarray:
    """Speak ``text`` with a built-in voice; float32 mono at ``sr`` (peak ~0.5)."""
    pieces = _pieces(text.strip())
    track = _track(pieces, voice, question=text.strip().endswith("?"))
    seed = zlib.crc32(f"{voice.name}\n{text}".encode())
    sound = render(track, np.random.default_rng(seed), sr)
    peak = np.max(np.abs(sound)) if len(sound) else 0.0
    return (sound * (0.5 / peak if peak > 0 else 0.0)).astype(np.float32)
