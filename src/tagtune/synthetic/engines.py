"""Speech for the synthetic corpus from espeak-ng, flite or the built-in babble.

espeak-ng starts in ~8 ms but speaks a short sentence in ~3 ms, so texts are read in batches:
one process per (voice, batch) reads an SSML document with a long break after every text,
and the audio is cut at those breaks.  A cut is accepted only if it yields exactly one
segment per text and every segment's length is plausible for its text; otherwise the batch
is re-read one text per process.  Both paths are deterministic: espeak-ng is seeded the same
way in every new process.  flite has no usable batch mode and is run once per text.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
import soxr

from tagtune.synthetic.babble import babble
from tagtune.synthetic.voices import ESPEAK_BINARY, FLITE_BINARY, Voice

BREAK_MS = 1500
BATCH_TEXTS = 10  # espeak-ng drops an SSML break now and then in longer documents
MIN_BREAK_S = 1.0  # espeak's own pauses (commas, full stops) stay well under this
QUIET_LEVEL = 64  # int16 peak below which a 10 ms frame counts as silent
FRAME_S = 0.01
BLIP_FRAMES = 12  # espeak sometimes clicks inside a break; louder runs this short are ignored
SECONDS_PER_CHAR = 0.065  # rough espeak/flite pace; a segment must lie within PLAUSIBLE x this
PLAUSIBLE = 5.0
CHAR_ALLOWANCE = 4  # a one-letter word still takes a syllable
TRIM_MARGIN_S = 0.01


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(io.BytesIO(data), dtype="int16")
    return audio, sr


def _quiet_frames(audio: np.ndarray, sr: int) -> np.ndarray:
    """(frames,) bool: frame peak under QUIET_LEVEL, with short loud blips absorbed."""
    hop = int(FRAME_S * sr)
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop)  # int16, compared without widening
    quiet = (frames.max(axis=1) <= QUIET_LEVEL) & (frames.min(axis=1) >= -QUIET_LEVEL)
    edges = np.diff(np.concatenate([[1], quiet.astype(np.int8), [1]]))
    starts, ends = np.nonzero(edges == -1)[0], np.nonzero(edges == 1)[0]  # loud runs
    blip = (ends - starts < BLIP_FRAMES) & (starts > 0) & (ends < n)
    fill = np.zeros(n + 1, dtype=np.int32)
    np.add.at(fill, starts[blip], 1)
    np.add.at(fill, ends[blip], -1)
    return quiet | (np.cumsum(fill)[:n] > 0)


def split_at_breaks(audio: np.ndarray, sr: int, n_texts: int) -> list[tuple[int, int]] | None:
    """Sample spans of the sounding segments between long breaks, or None if not n_texts."""
    quiet = _quiet_frames(audio, sr)
    hop = int(FRAME_S * sr)
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    long = [(s, e) for s, e in zip(starts, ends) if (e - s) * FRAME_S >= MIN_BREAK_S]
    bounds = [0] + [b for s, e in long for b in (s, e)] + [len(quiet)]
    spans = [(bounds[i] * hop, bounds[i + 1] * hop) for i in range(0, len(bounds), 2)]
    spans = [s for s in spans if s[1] - s[0] >= BLIP_FRAMES * hop]  # drop a trailing click
    return spans if len(spans) == n_texts else None


def _plausible(spans, texts, sr) -> bool:
    for (start, end), text in zip(spans, texts):
        ratio = (end - start) / sr / (SECONDS_PER_CHAR * (len(text) + CHAR_ALLOWANCE))
        if not 1 / PLAUSIBLE <= ratio <= PLAUSIBLE:
            return False
    return True


def _espeak(args: list[str], stdin: str) -> tuple[np.ndarray, int]:
    command = [ESPEAK_BINARY, *args, "--stdout"]
    proc = subprocess.run(command, input=stdin.encode("utf-8"), capture_output=True, check=True)
    return _decode_wav(proc.stdout)


def _espeak_args(voice: Voice, language: str) -> list[str]:
    return ["-v", voice.espeak_voice(language), "-s", str(int(voice.rate)), "-p", str(voice.pitch)]


def espeak_batch(texts: list[str], voice: Voice, language: str) -> tuple[list[np.ndarray], int]:
    """Read many texts with one espeak-ng process; int16 arrays at espeak's rate."""
    body = "".join(f'<s>{escape(t)}</s><break time="{BREAK_MS}ms"/>' for t in texts)
    audio, sr = _espeak(["-m", *_espeak_args(voice, language)], f"<speak>{body}</speak>")
    spans = split_at_breaks(audio, sr, len(texts))
    if spans is not None and _plausible(spans, texts, sr):
        return [audio[s:e] for s, e in spans], sr
    outputs = [_espeak(_espeak_args(voice, language), t) for t in texts]
    return [a for a, _ in outputs], outputs[0][1]


def flite_one(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """Read one text with flite (it cannot write to stdout, so via a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        stretch = f"duration_stretch={1.0 / voice.rate:.3f}"
        pitch = f"int_f0_target_mean={voice.f0:.1f}"
        cmd = [FLITE_BINARY, "-voice", voice.ident, "--setf", stretch, "--setf", pitch, "-t", text, "-o", str(path)]
        subprocess.run(cmd, capture_output=True, check=True)
        return _decode_wav(path.read_bytes())


def trim(audio: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing silence, keeping a short margin, so events sit right at the speech."""
    quiet = _quiet_frames(audio, sr)
    loud = np.nonzero(~quiet)[0]
    if len(loud) == 0:
        return audio[:0]
    hop, margin = int(FRAME_S * sr), int(TRIM_MARGIN_S * sr)
    return audio[max(0, loud[0] * hop - margin) : min(len(audio), (loud[-1] + 1) * hop + margin)]


def _to_float(audio: np.ndarray, sr: int, out_sr: int) -> np.ndarray:
    x = trim(audio, sr).astype(np.float32) / 32768.0
    return soxr.resample(x, sr, out_sr).astype(np.float32) if sr != out_sr else x


def speak(texts: list[str], voice: Voice, language: str, out_sr: int) -> list[np.ndarray]:
    """Speak each text with ``voice``; trimmed float32 mono arrays at ``out_sr``."""
    if voice.engine == "espeak":
        spoken = []
        for start in range(0, len(texts), BATCH_TEXTS):
            arrays, sr = espeak_batch(texts[start : start + BATCH_TEXTS], voice, language)
            spoken += [_to_float(a, sr, out_sr) for a in arrays]
        return spoken
    if voice.engine == "flite":
        return [_to_float(*flite_one(t, voice), out_sr) for t in texts]
    # quantised like the engines' int16 output so trimming behaves the same
    spoken = [np.round(babble(t, voice, out_sr) * 32767).astype(np.int16) for t in texts]
    return [_to_float(x, out_sr, out_sr) for x in spoken]
