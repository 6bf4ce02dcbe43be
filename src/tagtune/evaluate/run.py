"""``tagtune eval``: reliance, forgetting and free-running numbers for a tuned model and its base.

    evaluate(model_dir, data_dir, out_dir, base_dir=None, adapter=None, ...) -> report dict

writes ``report.json``, ``report.md`` and PNG plots to ``out_dir``. Every number is computed from the
validation split of the prepared DATA_DIR (the detector trains on its training split, plus codes the base
samples for tag-free training prompts as generated negatives; its false-positive rate is then measured on
the base's generations for the held-out validation prompts).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tagtune.data import PreparedDataset
from tagtune.evaluate.detector import CodeEventDetector, choose_window
from tagtune.evaluate.forgetting import forgetting_summary, untagged_nll
from tagtune.evaluate.freerun import (
    FreeRunSettings,
    Prompt,
    generate,
    make_prompts,
    score_clips,
    settings_dict,
    strip_tags,
    summarize_free,
)
from tagtune.evaluate.loading import BASE, EvaluationError, load_models
from tagtune.evaluate.reliance import occurrences, score_reliance, summarize
from tagtune.evaluate.report import build_report, write_report

log = logging.getLogger(__name__)
MAX_DETECTOR_CLIPS = 2000
GENERATED_NEGATIVES = 160  # training clips whose tag-free text the base speaks as the detector's negatives
NEGATIVES_SEED_OFFSET = 10_000  # their sampling seeds never coincide with the evaluation's
UNTAGGED_PROMPTS = 24  # tag-free prompts from untagged clips: at least this many, or half the tagged ones


def _split(data_dir: Path, split: str) -> list[dict]:
    try:
        ds = PreparedDataset(data_dir, split)
    except FileNotFoundError as e:
        raise EvaluationError(str(e)) from None
    return [ds[i] for i in range(len(ds))]


def _event_clips(items: list[dict], tags, tag_ids) -> list[tuple[torch.Tensor, list]]:
    """(codes, [(tag, first, last)]) of untagged clips and of tagged clips whose events match their tags."""
    out = []
    for c, it in enumerate(items):
        occs = occurrences(it, c, tags, tag_ids)
        if all(o.span is not None for o in occs):
            out.append((it["codes"], [(o.tag, *o.span) for o in occs]))
    return out


def _codebook(model_dir: Path | None, base_dir: Path | None) -> torch.Tensor:
    from tagtune.checkpoint import load_dvae

    folder = model_dir if model_dir is not None and (model_dir / "config.yaml").is_file() else base_dir
    return load_dvae(folder).codebook.embed.t().contiguous()  # (n_codes, dim)


def _bar(progress: bool, total: int, desc: str, unit: str):
    """A progress bar with ETA on stderr (off with ``progress=False``, and when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if progress else True, dynamic_ncols=True)


def generated_negatives(base, train: list[dict], space_id, settings: FreeRunSettings, seed: int,
                        n: int = GENERATED_NEGATIVES, progress: bool = False) -> list[torch.Tensor]:
    """Codes ``base`` (an EvalModel that never emits events) samples for ``n`` tag-free training prompts."""
    picks = random.Random(seed + NEGATIVES_SEED_OFFSET).sample(train, min(n, len(train)))
    tag_ids = set(base.tag_ids.values())
    prompts = [Prompt(k, strip_tags(it["text_ids"], tag_ids, space_id), False) for k, it in enumerate(picks)]
    with _bar(progress, len(prompts), "eval: detector negatives", "prompt") as bar:
        return generate(base, prompts, picks, settings, seed + NEGATIVES_SEED_OFFSET, on_batch=bar.update)


def train_detector(codebook, train: list[dict], val: list[dict], tags, tag_ids, seed: int,
                   negatives: list[torch.Tensor] | None = None):
    """The code-level event detector and its report (None when the corpus has no event boundaries)."""
    fit_clips = _event_clips(train, tags, tag_ids)
    if not any(spans for _, spans in fit_clips):
        return None, {"available": False, "reason": "the corpus has no event boundaries"}
    random.Random(seed).shuffle(fit_clips)
    fit_clips = fit_clips[:MAX_DETECTOR_CLIPS]
    window = choose_window([b - a for _, spans in fit_clips for _, a, b in spans])
    det = CodeEventDetector(codebook, list(tags.tags), window)
    counts = det.fit(fit_clips, seed, negatives)
    return det, {"available": True, "window_codes": window, "min_run_windows": det.min_run, "train_windows": counts,
                 "generated_negatives": len(negatives or []),
                 "held_out": det.accuracy(_event_clips(val, tags, tag_ids))}


def _free_running(models, detector, tagged, untagged, tags, space_id, settings, seed, progress: bool) -> dict:
    rng = random.Random(seed)
    tagged = rng.sample(tagged, min(settings.prompts, len(tagged)))
    untagged = rng.sample(untagged, min(settings.untagged_prompts, len(untagged)))
    items = tagged + untagged
    tag_ids = models[0].tag_ids
    prompts = make_prompts(tagged, untagged, set(tag_ids.values()), space_id)
    # the detector on the reference recordings themselves: tag-stripped twins would still hold the event
    real = [p for p in prompts if p.tagged or p.item >= len(tagged)]
    out = {"real_clips": summarize_free(score_clips(detector, real, [items[p.item]["codes"] for p in real],
                                                    items, tags, tag_ids), list(tags.tags))}
    for m in models:
        started = time.perf_counter()
        with _bar(progress, len(prompts), f"eval: free-running {m.name}", "prompt") as bar:
            codes = generate(m, prompts, items, settings, seed, on_batch=bar.update)
        out[m.name] = summarize_free(score_clips(detector, prompts, codes, items, tags, tag_ids), list(tags.tags))
        out[m.name]["seconds"] = round(time.perf_counter() - started, 2)
        out[m.name]["mean_generated_codes"] = sum(len(c) for c in codes) / max(1, len(codes))
        if m.name == BASE:  # held-out generated speech without events: every detection is a false positive
            out["detector_on_base"] = detector.false_positives(codes)
    return out


def _teacher_forced(models, tagged: list[dict], untagged: list[dict], tags, space_id, progress: bool) -> dict:
    """Reliance per model, untagged NLL per model and the forgetting ratio."""
    out: dict = {"reliance": {}, "untagged": {}}
    # one unit per clip scored (each tagged clip is scored in several text variants: it counts once)
    with _bar(progress, len(models) * (len(tagged) + len(untagged)), "eval: teacher-forced", "clip") as bar:
        for m in models:
            with torch.inference_mode():
                out["reliance"][m.name] = summarize(score_reliance(m, tagged, tags, space_id), list(tags.tags))
                bar.update(len(tagged))
                out["untagged"][m.name] = untagged_nll(m, untagged) if untagged else None
                bar.update(len(untagged))
            log.debug("%s: reliance and untagged NLL done", m.name)
    tuned_u, base_u = out["untagged"][models[0].name], out["untagged"].get("base")
    out["forgetting"] = forgetting_summary(tuned_u, base_u) if tuned_u else None
    return out


def _open_judges(settings, tags, model_dir, base_dir, adapter, device):
    """The judges' panel (see ``judges/``), opened before any work so that a missing judge model fails fast."""
    from tagtune.evaluate.judges import open_judges
    from tagtune.loaders import load_model

    loaded = load_model(base_dir if adapter is not None else model_dir, adapter, device=device)  # text, vocoder
    return open_judges(settings, tags, loaded)


def evaluate(model_dir: str | Path | None, data_dir: str | Path, out_dir: str | Path,
             base_dir: str | Path | None = None, adapter: str | Path | None = None, n_free: int = 48,
             seed: int = 0, device: str = "cpu", free_settings: FreeRunSettings | None = None,
             plots: bool = True, tag_init: str = "mean", tag_seed: int = 0, smoke: bool = False,
             progress: bool = True, judges=None) -> dict:
    """Evaluate a tuned model (folder, or ``base_dir`` + ``adapter``) on DATA_DIR; write and return the report.

    ``n_free`` tagged validation clips are used for free-running generation (0 skips it; ``free_settings``,
    when given, replaces it and the sampling defaults); ``seed`` fixes the prompt choice and the sampling.
    ``base_dir`` adds the base model's numbers and the forgetting ratio; when it lacks the tags it is grown
    with ``tag_init`` rows (seed ``tag_seed``): pass the training recipe's ``lora.tag_init`` and seed.
    ``smoke`` marks a run too small to judge (the demo's quick variant): the report shows its numbers and
    judges no acceptance check. ``progress`` shows a bar with ETA per stage on stderr (when it is a terminal).
    ``judges`` (a ``judges.JudgeSettings``) adds independent judges of the models' speech on a prompt suite.
    """
    started = time.perf_counter()
    settings = free_settings or FreeRunSettings(n_free, untagged_prompts=max(UNTAGGED_PROMPTS, n_free // 2))
    model_dir = Path(model_dir) if model_dir is not None else None
    tuned, base, tags, space_id = load_models(model_dir, base_dir, adapter, device, tag_init, tag_seed)
    models = [m for m in (tuned, base) if m is not None]
    panel = _open_judges(judges, tags, model_dir, base_dir, adapter, device) if judges is not None else None
    val = _split(Path(data_dir), "val")
    by_id = {i: t for t, i in tuned.tag_ids.items()}
    tagged = [it for it in val if any(int(i) in by_id for i in it["text_ids"])]
    untagged = [it for it in val if not any(int(i) in by_id for i in it["text_ids"])]
    if not tagged:
        raise EvaluationError(f"{data_dir}: no validation clip carries one of the tags {list(tags.tags)}")
    sections = _teacher_forced(models, tagged, untagged, tags, space_id, progress)
    train = _split(Path(data_dir), "train")
    negatives = (generated_negatives(base, train, space_id, settings, seed, progress=progress)
                 if base and settings.prompts else None)
    det, sections["detector"] = train_detector(_codebook(model_dir, Path(base_dir) if base_dir else None),
                                               train, val, tags, tuned.tag_ids, seed, negatives)
    sections["free"] = None
    if det is not None and settings.prompts > 0:
        sections["free"] = _free_running(models, det, tagged, untagged, tags, space_id, settings, seed, progress)
    meta = {"model": tuned.source, "base": base.source if base else None, "data": str(data_dir), "seed": seed,
            "tags": list(tags.tags), "validation": {"tagged": len(tagged), "untagged": len(untagged)},
            "free_running": settings_dict(settings), "base_tag_rows": base.tag_rows if base else None,
            "seconds": round(time.perf_counter() - started, 2), "smoke": smoke}
    report = build_report(meta, sections)
    if panel is not None:
        from tagtune.evaluate.judges import judge_models

        report["judges"] = judge_models(panel, models, val, train, seed,
                                        (det, sections["detector"].get("held_out")) if det is not None else None)
        report["meta"]["seconds"] = round(time.perf_counter() - started, 2)
    write_report(report, Path(out_dir), plots=plots)
    return report
