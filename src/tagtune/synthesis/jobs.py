"""``tagtune synth``: one text or a JSONL batch file -> 24 kHz 16-bit wav files.

A batch file has one JSON object per line: ``text``, ``ref``, ``out`` and optionally ``seed`` and sampling
settings (``do_sample``, ``num_beams``, ``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``,
``max_new_tokens``). Relative paths are read from the batch file's folder. Every line is checked before
the first one is synthesised, so a typo on line 90 does not cost 89 syntheses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from tagtune.audio import write_wav
from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.synthesis.reference import ReferenceAudioError

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("do_sample", "num_beams", "top_k", "top_p", "temperature", "repetition_penalty",
                 "max_new_tokens")
ITEM_KEYS = ("text", "ref", "out", "seed", *SAMPLING_KEYS)


class BatchFileError(UserError, ValueError):
    """A batch file line that cannot be used; the message names the file and line."""


@dataclass
class SynthItem:
    """One synthesis job."""

    text: str
    ref: Path
    out: Path
    seed: int | None = None
    generation: GenerationConfig | None = None


def generation_config(base: GenerationConfig | None = None, greedy: bool = False, **settings) -> GenerationConfig:
    """Official defaults (or greedy), then any given settings; bad values raise UserError."""
    cfg = base or (GenerationConfig.greedy() if greedy else GenerationConfig())
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        return replace(cfg, **given)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid sampling settings {given}: {e}") from None


def read_batch_file(path: str | Path, base: GenerationConfig | None = None) -> list[SynthItem]:
    """Parse and check a JSONL batch file (blank lines and lines starting with # are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise BatchFileError(f"batch file {path}: not found")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            items.append(_parse_line(line, f"{path}:{number}", path.parent, base))
    if not items:
        raise BatchFileError(f"batch file {path}: no items")
    return items


def _parse_line(line: str, where: str, folder: Path, base: GenerationConfig | None) -> SynthItem:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise BatchFileError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise BatchFileError(f"{where}: expected a JSON object with text, ref and out")
    if missing := [k for k in ("text", "ref", "out") if not isinstance(data.get(k), str) or not data[k]]:
        raise BatchFileError(f"{where}: missing or empty {', '.join(missing)}")
    if unknown := sorted(set(data) - set(ITEM_KEYS)):
        raise BatchFileError(f"{where}: unknown keys {unknown}; allowed: {', '.join(ITEM_KEYS)}")
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise BatchFileError(f"{where}: seed must be an integer")
    try:
        gen = generation_config(base, **{k: data.get(k) for k in SAMPLING_KEYS})
    except UserError as e:
        raise BatchFileError(f"{where}: {e}") from None
    return SynthItem(data["text"], folder / data["ref"], folder / data["out"], seed, gen)


def synth_command(model_dir, ref=None, text: str | None = None, batch=None, out=None, adapter=None,
                  seed: int | None = None, compat: str | None = None, precision: str = "auto",
                  greedy: bool = False, device: str = "cpu", unknown_tags: str = "error",
                  batch_size: int | None = None, **sampling) -> list[Path]:
    """Synthesise ``text`` with ``ref`` to ``out``, or every line of the JSONL ``batch``; returns written files.

    ``sampling`` takes the GenerationConfig fields (num_beams, top_k, ...); ``greedy`` starts from greedy
    decoding instead of the official 3-beam sampling. ``compat="official"`` decodes as the official release.
    """
    base = generation_config(greedy=greedy, **{k: sampling.get(k) for k in SAMPLING_KEYS})
    if unexpected := set(sampling) - set(SAMPLING_KEYS):
        raise TypeError(f"unexpected arguments {sorted(unexpected)}")
    items = _items(ref, text, batch, out, seed, base)
    for item in items:  # before the model loads: a typo should cost nothing
        if not item.ref.is_file():
            raise ReferenceAudioError(f"reference audio {item.ref}: not found")
    from tagtune.synthesis.tts import TTS

    options = {"batch_size": batch_size} if batch_size else {}
    tts = TTS.load(model_dir, adapter, device=device, precision="fp32" if compat else precision,
                   unknown_tags=unknown_tags, **options)
    written = []
    for item in items:
        result = tts.synthesize(item.text, item.ref, generation=item.generation, seed=item.seed, compat=compat)
        written.append(write_wav(item.out, result.audio, result.sample_rate))
        log.info("%s: %.2f s of audio, %d codes, RTF %.2f", item.out, result.seconds, result.tokens, result.rtf)
    return written


def _items(ref, text, batch, out, seed, base) -> list[SynthItem]:
    if batch is not None:
        if text is not None or out is not None:
            raise UserError("give either --batch FILE or --text with --out, not both")
        return read_batch_file(batch, base)
    if text is None or ref is None or out is None:
        raise UserError("--text, --ref and --out are required (or --batch FILE)")
    return [SynthItem(text, Path(ref), Path(out), seed, base)]

