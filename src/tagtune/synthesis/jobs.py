"""``tagtune synth``: one text or a JSONL batch file -> 24 kHz 16-bit wav files.

A batch file has one JSON object per line: ``text``, ``ref``, ``out`` and optionally ``seed`` and sampling
settings (``do_sample``, ``num_beams``, ``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``,
``max_new_tokens``). Relative paths are read from the batch file's folder.

Every item is checked before the first one is synthesised, so a typo on line 90 does not cost 89 syntheses:
its fields and seed, that its output can be written, that its reference decodes to a usable voice, and
(with the model's tokenizer, before the networks load) that its text is not empty or too long and knows its
tags. An error names the batch file and line, including one that happens during a synthesis.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tagtune.atomic import check_writable
from tagtune.audio import write_wav
from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.synthesis.reference import read_reference_audio
from tagtune.synthesis.tts import check_seed, text_to_sentences

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
    where: str = ""  # "FILE:LINE" of a batch file item, named in its errors


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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BatchFileError(f"{where}: seed must be an integer")
    try:
        seed = check_seed(seed)
        gen = generation_config(base, **{k: data.get(k) for k in SAMPLING_KEYS})
    except UserError as e:
        raise BatchFileError(f"{where}: {e}") from None
    return SynthItem(data["text"], folder / data["ref"], folder / data["out"], seed, gen, where)


def synth_command(model_dir, ref=None, text: str | None = None, batch=None, out=None, adapter=None,
                  seed: int | None = None, compat: str | None = None, precision: str = "auto",
                  greedy: bool = False, device: str = "cpu", unknown_tags: str = "error",
                  batch_size: int | None = None, **sampling) -> list[Path]:
    """Synthesise ``text`` with ``ref`` to ``out``, or every line of the JSONL ``batch``; returns written files.

    ``sampling`` takes the GenerationConfig fields (num_beams, top_k, ...); ``greedy`` starts from greedy
    decoding instead of the official 3-beam sampling. ``compat="official"`` decodes as the official release.
    Every item is checked (see the module docstring) before the networks load.
    """
    base = generation_config(greedy=greedy, **{k: sampling.get(k) for k in SAMPLING_KEYS})
    if unexpected := set(sampling) - set(SAMPLING_KEYS):
        raise TypeError(f"unexpected arguments {sorted(unexpected)}")
    items = _items(ref, text, batch, out, check_seed(seed), base)
    check_items(items)
    from tagtune.loaders import load_model
    from tagtune.synthesis.tts import TTS

    tokenizer = load_model(model_dir, adapter, device=device, unknown_tags=unknown_tags).tokenizer
    for item in items:
        with _named(item):
            text_to_sentences(tokenizer, item.text)
    options = {"batch_size": batch_size} if batch_size else {}
    tts = TTS.load(model_dir, adapter, device=device, precision="fp32" if compat else precision,
                   unknown_tags=unknown_tags, **options)
    written = []
    for item in items:
        with _named(item):
            result = tts.synthesize(item.text, item.ref, generation=item.generation, seed=item.seed, compat=compat)
            written.append(write_wav(item.out, result.audio, result.sample_rate))
        log.info("%s: %.2f s of audio, %d codes, RTF %.2f", item.out, result.seconds, result.tokens, result.rtf)
    return written


def check_items(items: list[SynthItem]) -> None:
    """What can be checked without the model: outputs writable and distinct, references usable."""
    outputs: dict[Path, str] = {}
    for item in items:
        with _named(item):
            out = item.out.resolve()
            if out in outputs:
                raise UserError(f"output {item.out} is also written by {outputs[out] or 'another item'}")
            outputs[out] = item.where
            if item.ref.resolve() == out:
                raise UserError(f"output {item.out} is the reference audio; writing it would destroy the voice",
                                params=("out", "ref"))
            check_writable(item.out, param="out")
    voices = set()
    for item in items:  # each voice once, named by the first line using it
        if item.ref.resolve() not in voices:
            voices.add(item.ref.resolve())
            with _named(item):
                read_reference_audio(item.ref)


@contextmanager
def _named(item: SynthItem):
    """Errors inside name the batch line of ``item`` (a one-text job has no line to name)."""
    try:
        yield
    except BatchFileError:
        raise
    except UserError as e:
        if not item.where:
            raise
        raise BatchFileError(f"{item.where}: {e}") from None
    except Exception:  # a bug: its traceback follows; say which item met it
        if item.where:
            log.error("%s: synthesis failed", item.where)
        raise


def _items(ref, text, batch, out, seed, base) -> list[SynthItem]:
    if batch is not None:
        if text is not None or out is not None:
            raise UserError("give either a batch file or a text with its output, not both")
        return read_batch_file(batch, base)
    if text is None or ref is None or out is None:
        raise UserError("a text needs a reference and an output file (or give a batch file)")
    return [SynthItem(text, Path(ref), Path(out), seed, base)]
