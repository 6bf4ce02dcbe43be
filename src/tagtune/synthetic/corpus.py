"""generate_corpus: a deterministic synthetic tagged speech corpus, written on the fly.

Clips are scripted in the parent process from one seeded generator, then rendered in units
of ``CLIPS_PER_UNIT`` consecutive clips (all speech of a unit's voice read in espeak
batches, then events spliced in).  Units are independent of the number of workers, so a
seed gives the same bytes with one worker or many; results stream to disk in clip order.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from tagtune.synthetic.clips import assemble_clip
from tagtune.synthetic.engines import speak
from tagtune.synthetic.events import TAG_KINDS
from tagtune.synthetic.script import ClipPlan, plan_clip
from tagtune.synthetic.voices import ESPEAK_BINARY, FLITE_BINARY, VOICES, resolve_engine, select_voices
from tagtune.synthetic.writers import CORPUS_JSON, FORMATS, WAV_DIR, encode_wav, open_writer

SAMPLE_RATE = 24_000
DEFAULT_TAGS = ("giggles", "laughs", "sighs")
CLIP_SECONDS = (1.5, 8.0)
TAGS_PER_CLIP = (1, 2)
CLIPS_PER_UNIT = 40
MIN_CLIPS_FOR_POOL = 2 * CLIPS_PER_UNIT
MAX_WORKERS = 8
CORPUS_VERSION = 1


@dataclass
class CorpusInfo:
    """What ``generate_corpus`` wrote (also saved, less the timings, as corpus.json)."""

    out_dir: str
    fmt: str
    manifest: str
    engine: str
    engine_version: str
    sample_rate: int
    seed: int
    settings: dict
    n_clips: int
    n_tagged: int
    tag_counts: dict
    speaker_counts: dict
    language_counts: dict
    total_seconds: float
    min_seconds: float
    max_seconds: float
    elapsed_s: float = field(default=0.0, compare=False)

    @property
    def clips_per_second(self) -> float:
        """Generation speed of the call that returned this info."""
        return self.n_clips / self.elapsed_s if self.elapsed_s else 0.0


def _engine_version(engine: str) -> str:
    """The engine's version line, recorded because espeak/flite output changes across releases."""
    binary = {"espeak": ESPEAK_BINARY, "flite": FLITE_BINARY}.get(engine)
    if binary is None:
        return f"tagtune builtin v{CORPUS_VERSION}"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def make_plans(
    n_clips: int, seed: int, tags, untagged_fraction: float, voices, chinese_fraction: float = 0.0,
    tag_weights=None, voice_weights=None,
) -> list[ClipPlan]:
    """Script every clip; exactly round(n * untagged_fraction) of them carry no tag.

    ``tag_weights`` (one per tag, any positive scale) makes some tags more frequent, ``voice_weights`` (one per
    voice) some voices; None: all equally, and the random draws are those of a call without the option."""
    rng = np.random.default_rng([seed, 0])
    untagged = set(rng.permutation(n_clips)[: round(n_clips * untagged_fraction)].tolist())
    voice_p, tag_p = _probabilities(voice_weights), _probabilities(tag_weights)
    plans = []
    for index in range(n_clips):
        voice = voices[_pick(rng, len(voices), voice_p)].name
        language = "zh" if rng.random() < chinese_fraction else "en"
        n_tags = 0 if index in untagged else int(rng.integers(TAGS_PER_CLIP[0], TAGS_PER_CLIP[1] + 1))
        clip_tags = [tags[_pick(rng, len(tags), tag_p)] for _ in range(n_tags)]
        plans.append(plan_clip(rng, index, voice, language, clip_tags, rng.uniform(*CLIP_SECONDS)))
    return plans


def _probabilities(weights) -> np.ndarray | None:
    return None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))


def _pick(rng: np.random.Generator, n: int, p: np.ndarray | None) -> int:
    """One of range(n): uniform (``rng.integers``, the draw of a corpus without weights) or with probabilities p."""
    return int(rng.integers(n)) if p is None else int(rng.choice(n, p=p))


def _speak_unit(plans: list[ClipPlan]) -> dict[tuple[int, int], np.ndarray]:
    """Audio of every speech part of a unit, keyed by (clip index, part number)."""
    jobs: dict[tuple[str, str], list[tuple[tuple[int, int], str]]] = {}
    for plan in plans:
        texts = [value for kind, value in plan.parts if kind == "speech"]
        for number, text in enumerate(texts):
            jobs.setdefault((plan.voice, plan.language), []).append(((plan.index, number), text))
    audio = {}
    for (voice, language), items in jobs.items():
        spoken = speak([text for _, text in items], VOICES[voice], language, SAMPLE_RATE)
        audio.update({key: sound for (key, _), sound in zip(items, spoken)})
    return audio


def _render_unit(args: tuple[list[ClipPlan], int]) -> list[tuple[dict, bytes]]:
    """Render one unit of clips to (manifest record, wav bytes) in clip order."""
    plans, seed = args
    audio = _speak_unit(plans)
    results = []
    for plan in plans:
        n_speech = sum(kind == "speech" for kind, _ in plan.parts)
        speech = [audio[(plan.index, n)] for n in range(n_speech)]
        rng = np.random.default_rng([seed, plan.index, 1])
        samples, events = assemble_clip(plan, speech, VOICES[plan.voice], rng, SAMPLE_RATE)
        record = {
            "audio": f"{WAV_DIR}/{plan.index:05d}.wav", "text": plan.text, "speaker": plan.voice,
            "language": plan.language, "events": events,
            "duration": round(len(samples) / SAMPLE_RATE, 4), "sample_rate": SAMPLE_RATE,
        }
        results.append((record, encode_wav(samples, SAMPLE_RATE)))
    return results


def _rendered(units: list[tuple[list[ClipPlan], int]], workers: int):
    """Rendered units in order, with a spawn-based pool when workers > 1."""
    if workers <= 1:
        yield from map(_render_unit, units)
        return
    # spawn, not fork: the caller may hold torch/OpenMP threads that a fork would break
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(_render_unit, units)


def _check_tags(tags) -> tuple[str, ...]:
    tags = tuple(tags)
    unknown = [t for t in tags if t not in TAG_KINDS]
    if not tags or unknown:
        raise ValueError(f"tags must be non-empty and known; unknown: {unknown}; known: {sorted(TAG_KINDS)}")
    return tags


def _check_weights(option: str, names: list[str], weights: dict[str, float] | None) -> list[float] | None:
    """``weights`` ({name: weight}, names not given weigh 0) as one float per name, in ``names`` order."""
    if weights is None:
        return None
    unknown = sorted(set(weights) - set(names))
    values = [weights.get(n, 0.0) for n in names]
    if unknown or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"{option} must give each of {names} a weight >= 0 (not all 0); got {weights}")
    return [float(v) for v in values]


def _auto_workers(n_clips: int) -> int:
    if n_clips < MIN_CLIPS_FOR_POOL:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS, -(-n_clips // CLIPS_PER_UNIT)))


def _summary(records: list[dict]) -> dict:
    durations = [r["duration"] for r in records] or [0.0]
    return {
        "n_clips": len(records),
        "n_tagged": sum(bool(r["events"]) for r in records),
        "tag_counts": dict(sorted(Counter(e["tag"] for r in records for e in r["events"]).items())),
        "speaker_counts": dict(sorted(Counter(r["speaker"] for r in records).items())),
        "language_counts": dict(sorted(Counter(r["language"] for r in records).items())),
        "total_seconds": round(sum(durations), 3),
        "min_seconds": min(durations),
        "max_seconds": max(durations),
    }


def generate_corpus(
    out_dir: str | Path,
    n_clips: int = 200,
    seed: int = 0,
    tags=DEFAULT_TAGS,
    untagged_fraction: float = 0.25,
    voices=None,
    engine: str = "auto",
    fmt: str = "jsonl",
    chinese_fraction: float = 0.0,
    workers: int | None = None,
    progress: bool = False,
    tag_weights: dict[str, float] | None = None,
    voice_weights: dict[str, float] | None = None,
) -> CorpusInfo:
    """Write a synthetic tagged speech corpus to ``out_dir`` and describe it.

    ``tags``: tag names written inline as ``<tag>`` (each maps to giggle/laugh/sigh sound);
    ``untagged_fraction`` of the clips carry none, the others 1-2.  ``voices``: voice names
    of the chosen engine (see ``VOICES``), default all of them.  ``engine``: "auto" (espeak-ng,
    else flite, else built-in), "espeak", "flite" or "builtin".  ``fmt``: "jsonl" (wavs +
    metadata.jsonl) or "parquet" (Elise layout).  ``chinese_fraction``: share of Mandarin
    clips (espeak-ng's cmn voice or built-in babble).  ``workers``: processes (None: one for
    small corpora, else one per CPU).  ``progress``: a bar over the clips on stderr (off when stderr is not a
    terminal).  ``tag_weights``: relative frequency per tag (e.g. Elise's: laughs more common than sighs,
    giggles rarer); None: all tags equally often.  ``voice_weights``: relative share of the clips per voice name
    (e.g. one voice holding half a mixed set); None: all voices equally.  The same arguments give byte-identical
    files.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    engine = resolve_engine(engine)
    chosen = select_voices(engine, voices)
    settings = _settings(n_clips, seed, _check_tags(tags), untagged_fraction, chosen, engine, fmt, chinese_fraction)
    weights = _check_weights("tag_weights", settings["tags"], tag_weights)
    if weights is not None:
        settings["tag_weights"] = dict(zip(settings["tags"], weights))
    shares = _check_weights("voice_weights", settings["voices"], voice_weights)
    if shares is not None:
        settings["voice_weights"] = dict(zip(settings["voices"], shares))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = open_writer(fmt, out)
    plans = make_plans(n_clips, seed, settings["tags"], untagged_fraction, chosen, chinese_fraction, weights, shares)
    units = [(plans[i : i + CLIPS_PER_UNIT], seed) for i in range(0, n_clips, CLIPS_PER_UNIT)]
    records = []
    bar = tqdm(total=n_clips, desc="corpus", unit="clip", dynamic_ncols=True, disable=None if progress else True)
    try:
        for unit in _rendered(units, workers or _auto_workers(n_clips)):
            for record, wav in unit:
                writer.add(record, wav)
                records.append(record)
            bar.update(len(unit))
    finally:
        bar.close()
        writer.close()
    info = CorpusInfo(
        out_dir=str(out), fmt=fmt, manifest=str(writer.manifest_path.relative_to(out)),
        engine=engine, engine_version=_engine_version(engine), sample_rate=SAMPLE_RATE,
        seed=seed, settings=settings, **_summary(records),
    )
    _describe(info, out / CORPUS_JSON)
    info.elapsed_s = time.perf_counter() - started
    return info


def _settings(n_clips, seed, tags, untagged_fraction, voices, engine, fmt, chinese_fraction) -> dict:
    """Validated settings, as recorded in corpus.json."""
    if not 0.0 <= untagged_fraction <= 1.0 or not 0.0 <= chinese_fraction <= 1.0:
        raise ValueError("untagged_fraction and chinese_fraction must lie in [0, 1]")
    if engine == "flite" and chinese_fraction > 0:
        raise ValueError("flite has no Mandarin voice; use engine='espeak' or 'builtin' for Chinese clips")
    if fmt not in FORMATS:
        raise ValueError(f"unknown corpus format {fmt!r}; choose one of {FORMATS}")
    if n_clips < 1:
        raise ValueError(f"n_clips must be at least 1, got {n_clips}")
    return {
        "n_clips": n_clips, "seed": seed, "tags": list(tags), "untagged_fraction": untagged_fraction,
        "voices": [v.name for v in voices], "engine": engine, "fmt": fmt,
        "chinese_fraction": chinese_fraction, "clip_seconds": list(CLIP_SECONDS),
    }


def _describe(info: CorpusInfo, path: Path) -> None:
    """Write corpus.json: everything in ``info`` that does not vary between identical runs."""
    description = {"generator": "tagtune.synthetic", "version": CORPUS_VERSION, **asdict(info)}
    for volatile in ("elapsed_s", "out_dir"):
        description.pop(volatile)
    path.write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
