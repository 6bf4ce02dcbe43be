"""Voices of the three speech engines, and which engines this machine has.

A voice name is what lands in the manifest's ``speaker`` field, so every engine's names are
distinct.  ``f0`` is the voice's typical pitch: the built-in engine speaks at it and the
events of a clip are pitched relative to it, so giggles of a low voice are lower too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

ENGINES = ("espeak", "flite", "builtin")
# What a voice is for. Pre-training voices make the tiny base; the fine-tune voice is the one speaker of the
# Elise-like corpus; held-out voices are never in pre-training nor in fine-tuning, so they are the "unseen"
# voices of the transfer evaluation. Corpora use pre-training voices unless voices are named.
PRETRAIN, FINE_TUNE, HELD_OUT = "pretrain", "fine-tune", "held-out"
ESPEAK_BINARY = "espeak-ng"
FLITE_BINARY = "flite"


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    ``ident``: the engine's own voice id (espeak ``-v`` value without the language for Chinese,
    flite ``-voice`` name, or a built-in label).  ``rate``: espeak words per minute, or a
    speed factor for flite/built-in.  ``pitch``: espeak ``-p`` (0-99); unused elsewhere.
    ``formant_scale``/``breath``: vocal-tract length and breathiness of the built-in voice.
    """

    name: str
    engine: str
    ident: str
    f0: float
    rate: float
    pitch: int = 50
    formant_scale: float = 1.0
    breath: float = 0.08
    role: str = PRETRAIN
    gender: str = ""  # "f" or "m": unseen voices are rendered as one female and one male in the demo

    def espeak_voice(self, language: str) -> str:
        """The ``-v`` argument: the English variant, or Mandarin with the same variant."""
        if language == "zh":
            variant = self.ident.partition("+")[2]
            return "cmn+" + variant if variant else "cmn"
        return self.ident


VOICES = {
    v.name: v
    for v in (
        Voice("espeak-us-f3", "espeak", "en-us+f3", f0=230.0, rate=165, pitch=55, gender="f"),
        Voice("espeak-gb-f5", "espeak", "en-gb+f5", f0=250.0, rate=175, pitch=65, gender="f"),
        Voice("espeak-us-m3", "espeak", "en-us+m3", f0=110.0, rate=160, pitch=40, gender="m"),
        Voice("espeak-gb-m1", "espeak", "en-gb", f0=130.0, rate=185, pitch=50, gender="m"),
        Voice("espeak-rp-f2", "espeak", "en-gb-x-rp+f2", f0=210.0, rate=150, pitch=45, gender="f"),
        Voice("espeak-us-m6", "espeak", "en-us+m6", f0=120.0, rate=170, pitch=35, gender="m"),
        Voice("espeak-lan-annie", "espeak", "en-gb-x-gbclan+Annie", f0=240.0, rate=160, pitch=60, gender="f"),
        Voice("espeak-nyc-m2", "espeak", "en-us-nyc+m2", f0=115.0, rate=180, pitch=45, gender="m"),
        Voice("espeak-029-linda", "espeak", "en-029+Linda", f0=220.0, rate=155, pitch=50, gender="f"),
        Voice("espeak-sc-m4", "espeak", "en-gb-scotland+m4", f0=105.0, rate=165, pitch=30, gender="m"),
        Voice("espeak-us-andrea", "espeak", "en-us+Andrea", f0=235.0, rate=180, pitch=58, gender="f"),
        Voice("espeak-gb-m7", "espeak", "en-gb+m7", f0=125.0, rate=150, pitch=42, gender="m"),
        # the Elise-like fine-tune speaker: in no pre-training corpus, like a user's own voice
        Voice("espeak-us-alicia", "espeak", "en-us+Alicia", f0=225.0, rate=170, pitch=62, role=FINE_TUNE,
              gender="f"),
        # unseen voices: in no training corpus at all
        Voice("espeak-gb-belinda", "espeak", "en-gb+Belinda", f0=215.0, rate=160, pitch=55, role=HELD_OUT,
              gender="f"),
        Voice("espeak-wm-anika", "espeak", "en-gb-x-gbcwmd+anika", f0=245.0, rate=175, pitch=68, role=HELD_OUT,
              gender="f"),
        Voice("espeak-us-michael", "espeak", "en-us+Michael", f0=115.0, rate=165, pitch=38, role=HELD_OUT,
              gender="m"),
        Voice("espeak-sc-edward", "espeak", "en-gb-scotland+Edward", f0=125.0, rate=175, pitch=46, role=HELD_OUT,
              gender="m"),
        Voice("flite-slt", "flite", "slt", f0=190.0, rate=1.0, gender="f"),
        Voice("flite-rms", "flite", "rms", f0=110.0, rate=1.05, gender="m"),
        Voice("flite-awb", "flite", "awb", f0=120.0, rate=0.95, gender="m"),
        Voice("flite-kal16", "flite", "kal16", f0=105.0, rate=1.0, gender="m"),
        Voice("builtin-f1", "builtin", "f1", f0=215.0, rate=1.0, formant_scale=1.17, breath=0.12, gender="f"),
        Voice("builtin-f2", "builtin", "f2", f0=255.0, rate=1.1, formant_scale=1.22, breath=0.05, gender="f"),
        Voice("builtin-m1", "builtin", "m1", f0=110.0, rate=0.95, formant_scale=1.0, breath=0.06, gender="m"),
        Voice("builtin-m2", "builtin", "m2", f0=145.0, rate=1.15, formant_scale=0.95, breath=0.15, gender="m"),
        Voice("builtin-f3", "builtin", "f3", f0=235.0, rate=1.05, formant_scale=1.12, breath=0.09, role=FINE_TUNE,
              gender="f"),
        Voice("builtin-f4", "builtin", "f4", f0=200.0, rate=0.9, formant_scale=1.2, breath=0.1, role=HELD_OUT,
              gender="f"),
        Voice("builtin-m3", "builtin", "m3", f0=125.0, rate=1.05, formant_scale=0.9, breath=0.1, role=HELD_OUT,
              gender="m"),
    )
}


def voices_with(role: str, engine: str = "espeak") -> tuple[str, ...]:
    """Names of the ``engine``'s voices that have ``role`` (PRETRAIN, FINE_TUNE or HELD_OUT)."""
    return tuple(v.name for v in VOICES.values() if v.engine == engine and v.role == role)


def engine_available(engine: str) -> bool:
    """Whether ``engine`` can run here (the built-in one always can)."""
    if engine == "espeak":
        return shutil.which(ESPEAK_BINARY) is not None
    if engine == "flite":
        return shutil.which(FLITE_BINARY) is not None
    return engine == "builtin"


def resolve_engine(engine: str) -> str:
    """Map "auto" to the best engine installed; check that a named one is installed."""
    if engine == "auto":
        return next(e for e in ENGINES if engine_available(e))
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    if not engine_available(engine):
        binary = ESPEAK_BINARY if engine == "espeak" else FLITE_BINARY
        raise RuntimeError(
            f"engine {engine!r} needs {binary} on PATH (apt-get install {binary}); or use engine='builtin'"
        )
    return engine


def select_voices(engine: str, names=None) -> tuple[Voice, ...]:
    """The voices to use: the engine's pre-training voices, or the named ones (which must match it)."""
    if not names:
        return tuple(v for v in VOICES.values() if v.engine == engine and v.role == PRETRAIN)
    unknown = [n for n in names if n not in VOICES]
    if unknown:
        raise ValueError(f"unknown voices {unknown}; known: {sorted(VOICES)}")
    wrong = [n for n in names if VOICES[n].engine != engine]
    if wrong:
        raise ValueError(f"voices {wrong} do not belong to engine {engine!r}")
    return tuple(VOICES[n] for n in names)
