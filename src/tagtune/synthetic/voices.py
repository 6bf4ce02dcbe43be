"""Voices of the three speech engines, and which engines this machine has.

A voice name is what lands in the manifest's ``speaker`` field, so every engine's names are
distinct.  ``f0`` is the voice's typical pitch: the built-in engine speaks at it and the
events of a clip are pitched relative to it, so giggles of a low voice are lower too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

ENGINES = ("espeak", "flite", "builtin")
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

    def espeak_voice(self, language: str) -> str:
        """The ``-v`` argument: the English variant, or Mandarin with the same variant."""
        if language == "zh":
            variant = self.ident.partition("+")[2]
            return "cmn+" + variant if variant else "cmn"
        return self.ident


VOICES = {
    v.name: v
    for v in (
        Voice("espeak-us-f3", "espeak", "en-us+f3", f0=230.0, rate=165, pitch=55),
        Voice("espeak-gb-f5", "espeak", "en-gb+f5", f0=250.0, rate=175, pitch=65),
        Voice("espeak-us-m3", "espeak", "en-us+m3", f0=110.0, rate=160, pitch=40),
        Voice("espeak-gb-m1", "espeak", "en-gb", f0=130.0, rate=185, pitch=50),
        Voice("espeak-rp-f2", "espeak", "en-gb-x-rp+f2", f0=210.0, rate=150, pitch=45),
        Voice("flite-slt", "flite", "slt", f0=190.0, rate=1.0),
        Voice("flite-rms", "flite", "rms", f0=110.0, rate=1.05),
        Voice("flite-awb", "flite", "awb", f0=120.0, rate=0.95),
        Voice("flite-kal16", "flite", "kal16", f0=105.0, rate=1.0),
        Voice("builtin-f1", "builtin", "f1", f0=215.0, rate=1.0, formant_scale=1.17, breath=0.12),
        Voice("builtin-f2", "builtin", "f2", f0=255.0, rate=1.1, formant_scale=1.22, breath=0.05),
        Voice("builtin-m1", "builtin", "m1", f0=110.0, rate=0.95, formant_scale=1.0, breath=0.06),
        Voice("builtin-m2", "builtin", "m2", f0=145.0, rate=1.15, formant_scale=0.95, breath=0.15),
    )
}


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
    """The voices to use: the engine's whole table, or the named ones (which must match it)."""
    if not names:
        return tuple(v for v in VOICES.values() if v.engine == engine)
    unknown = [n for n in names if n not in VOICES]
    if unknown:
        raise ValueError(f"unknown voices {unknown}; known: {sorted(VOICES)}")
    wrong = [n for n in names if VOICES[n].engine != engine]
    if wrong:
        raise ValueError(f"voices {wrong} do not belong to engine {engine!r}")
    return tuple(VOICES[n] for n in names)
