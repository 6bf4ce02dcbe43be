"""``tagtune synth``: one text or a JSONL batch file -> 24 kHz 16-bit wav files.

A batch file has one JSON object per line: ``text``, ``ref``, ``out`` and optionally ``seed`` and sampling
settings (``do_sample``, ``num_beams``, ``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``,
``max_new_tokens``, ``tag_guidance``, ``anchor_share``); for an IndexTTS-2 model also emotion settings
(``emo_ref``, ``emo_alpha``, ``emo_vector``, ``emo_text``), which replace the command's. Relative paths are read
from the batch file's folder.

Every item is checked before the first one is synthesised, so a typo on line 90 does not cost 89 syntheses:
its fields and seed, that its output can be written, that its reference decodes to a usable voice, and
(with the model's tokenizer, before the networks load) that its text is not empty or too long and knows its
tags. An error names the batch file and line, including one that happens during a synthesis.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from tagtune.atomic import check_writable
from tagtune.audio import write_wav
from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.synthesis.reference import read_reference_audio
from tagtune.synthesis.tts import check_seed, text_to_sentences

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("do_sample", "num_beams", "top_k", "top_p", "temperature", "repetition_penalty",
                 "max_new_tokens", "tag_guidance", "anchor_share")
EMOTION_KEYS = ("emo_ref", "emo_alpha", "emo_vector", "emo_text")  # IndexTTS-2 only
ITEM_KEYS = ("text", "ref", "out", "seed", *SAMPLING_KEYS, *EMOTION_KEYS)


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
    emotion: dict = field(default_factory=dict)  # the item's own EMOTION_KEYS (paths relative to the file)


def generation_config(base: GenerationConfig | None = None, greedy: bool = False, **settings) -> GenerationConfig:
    """Official defaults (or greedy: argmax with the official penalty 10 kept), then any given settings
    (``repetition_penalty=1.0`` makes greedy plain argmax); bad values raise UserError."""
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
    emotion = {k: data[k] for k in EMOTION_KEYS if data.get(k) is not None}
    if "emo_ref" in emotion:
        emotion["emo_ref"] = str(folder / emotion["emo_ref"])
    return SynthItem(data["text"], folder / data["ref"], folder / data["out"], seed, gen, where, emotion)


def synth_command(model_dir, ref=None, text: str | None = None, batch=None, out=None, adapter=None,
                  seed: int | None = None, compat: str | None = None, precision: str = "auto",
                  greedy: bool = False, device: str = "cpu", unknown_tags: str = "error",
                  batch_size: int | None = None, progress: bool = True, emotion: dict | None = None,
                  base_anchor=None, **sampling) -> list[Path]:
    """Synthesise ``text`` with ``ref`` to ``out``, or every line of the JSONL ``batch``; returns written files.

    ``sampling`` takes the GenerationConfig fields (num_beams, top_k, ...); ``greedy`` starts from greedy
    decoding instead of the official 3-beam sampling. ``compat="official"`` decodes as the official release.
    Every item is checked (see the module docstring) before the networks load. ``progress`` shows a bar with
    ETA over the items of a batch file on stderr (when it is a terminal). ``emotion`` (IndexTTS-2 folders only):
    ``emo_ref``, ``emo_alpha``, ``emo_vector`` (8 weights or "w1,...,w8"), ``emo_text``, for every item; an
    IndexTTS-2 folder starts from its official decoding (``generation.v2.official_v2``). ``base_anchor``: the base
    model folder that guided decoding starts from (``TTS.load``).
    """
    from tagtune.checkpoint import model_family

    v2 = Path(model_dir).is_dir() and model_family(model_dir) == "v2"
    emotion = _emotion_settings(emotion or {}, v2)
    base = generation_config(_v2_base(greedy) if v2 else None, greedy=greedy,
                             **{k: sampling.get(k) for k in SAMPLING_KEYS})
    if unexpected := set(sampling) - set(SAMPLING_KEYS):
        raise TypeError(f"unexpected arguments {sorted(unexpected)}")
    items = _items(ref, text, batch, out, check_seed(seed), base)
    check_items(items)
    per_item = []
    for item in items:
        with _named(item):
            per_item.append({**emotion, **_emotion_settings(item.emotion, v2)})
    from tagtune.loaders import load_model
    from tagtune.synthesis.tts import TTS

    tokenizer = load_model(model_dir, adapter, device=device, unknown_tags=unknown_tags).tokenizer
    for item in items:
        with _named(item):
            text_to_sentences(tokenizer, item.text)
    options = {"batch_size": batch_size} if batch_size and not v2 else {}
    if base_anchor is not None:
        options["base_anchor"] = base_anchor
    tts = TTS.load(model_dir, adapter, device=device, precision="fp32" if compat else precision,
                   unknown_tags=unknown_tags, **options)
    written = []
    bar = tqdm(items, desc="synth", unit="item", dynamic_ncols=True, disable=None if progress and batch else True)
    for item, item_emotion in zip(bar, per_item, strict=True):
        with _named(item):
            result = tts.synthesize(item.text, item.ref, generation=item.generation, seed=item.seed, compat=compat,
                                    **item_emotion)
            written.append(write_wav(item.out, result.audio, result.sample_rate))
        log.info("%s: %.2f s of audio, %d codes, RTF %.2f", item.out, result.seconds, result.tokens, result.rtf)
    return written


def _v2_base(greedy: bool) -> GenerationConfig:
    from tagtune.generation.v2 import official_v2

    return official_v2(do_sample=False, num_beams=1) if greedy else official_v2()


def _emotion_settings(emotion: dict, v2: bool) -> dict:
    """Emotion settings as TTSV2.synthesize takes them; refused for a 1.x model."""
    if not emotion:
        return {}
    if not v2:
        raise UserError(f"{', '.join(sorted(emotion))}: emotion settings need an IndexTTS-2 model",
                        params=tuple(sorted(emotion)))
    from tagtune.synthesis.tts_v2 import EmotionError, check_emotion_vector, parse_emotion_vector

    out = dict(emotion)
    if "emo_ref" in out:
        out["emotion"] = Path(out.pop("emo_ref"))
        read_reference_audio(out["emotion"], min_seconds=0.0)
    if isinstance(out.get("emo_vector"), str):
        out["emo_vector"] = parse_emotion_vector(out["emo_vector"])
    elif "emo_vector" in out:
        out["emo_vector"] = check_emotion_vector(out["emo_vector"])
    if "emo_alpha" in out:
        alpha = out["emo_alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise EmotionError(f"emo_alpha must be a number from 0 to 1, got {alpha!r}", params=("emo_alpha",))
    if not isinstance(out.get("emo_text", ""), str):
        raise EmotionError(f"emo_text must be text, got {out['emo_text']!r}", params=("emo_text",))
    return out


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
