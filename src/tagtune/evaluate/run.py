"""``tagtune eval``: reliance, forgetting and free-running numbers for a tuned model and its base.

    evaluate(model_dir, data_dir, out_dir, base_dir=None, adapter=None, ...) -> report dict

writes ``report.json``, ``report.md`` and PNG plots to ``out_dir``. Every number is computed from the
validation split of the prepared DATA_DIR (the detector trains on its training split, plus codes the base
samples for tag-free training prompts as generated negatives; its false-positive rate is then measured on
the base's generations for the held-out validation prompts).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path

import torch

from tagtune.evaluate.forgetting import forgetting_summary, untagged_nll
from tagtune.evaluate.freerun import (
    FreeRunSettings,
    anchor_for,
    batch_rows,
    conditioning_of,
    generate,
    make_prompts,
    score_clips,
    score_recordings,
    settings_dict,
    summarize_free,
)
from tagtune.evaluate.loading import BASE, EvaluationError, load_models
from tagtune.evaluate.prepared import codebook_of, generated_negatives, progress_bar, split_items, train_detector
from tagtune.evaluate.reliance import score_reliance, summarize
from tagtune.evaluate.report import build_report, write_report

log = logging.getLogger(__name__)
UNTAGGED_PROMPTS = 24  # tag-free prompts from untagged clips: at least this many, or half the tagged ones


def _free_running(models, detector, tagged, untagged, tags, space_id, settings, seed, progress: bool) -> dict:
    rng = random.Random(seed)
    tagged = rng.sample(tagged, min(settings.prompts, len(tagged)))
    untagged = rng.sample(untagged, min(settings.untagged_prompts, len(untagged)))
    items = tagged + untagged
    tag_ids = models[0].tag_ids
    prompts = make_prompts(tagged, untagged, set(tag_ids.values()), space_id)
    # the detector on the reference recordings themselves
    out = {"real_clips": score_recordings(detector, prompts, len(tagged), items, tags, tag_ids)}
    conditioning = conditioning_of(models, items)
    for m in models:
        started = time.perf_counter()
        with progress_bar(progress, len(prompts), f"eval: free-running {m.name}", "prompt") as bar:
            codes = generate(m, prompts, items, settings, seed, on_batch=bar.update,
                             anchor=anchor_for(m, models, settings), conditioning=conditioning)
        out[m.name] = summarize_free(score_clips(detector, prompts, codes, items, tags, tag_ids), list(tags.tags))
        out[m.name]["seconds"] = round(time.perf_counter() - started, 2)
        out[m.name]["mean_generated_codes"] = sum(len(c) for c in codes) / max(1, len(codes))
        if m.name == BASE:  # held-out generated speech without events: every detection is a false positive
            out["detector_on_base"] = detector.false_positives(codes)
    return out


def _transfer(models, transfer_dir, ft_train: list[dict], model_dir, base_dir, tags, space_id, seed, settings,
              free: FreeRunSettings, progress: bool) -> dict:
    """The transfer section: the fine-tune voices are the speakers of the fine-tune data's training split; its
    prompts are sampled as the main free-running check's (``free``)."""
    from tagtune.evaluate.transfer import evaluate_transfer, open_transfer_set, open_voice_set

    train, val = open_transfer_set(Path(transfer_dir), models)
    voices = open_voice_set(Path(settings.voices_dir), Path(transfer_dir)) if settings and settings.voices_dir else None
    codebook = codebook_of(model_dir, Path(base_dir) if base_dir else None)
    return evaluate_transfer(models, codebook, train, val, {it["speaker"] for it in ft_train}, tags, space_id,
                             seed, settings, free, progress=progress, voices=voices)


def _teacher_forced(models, tagged: list[dict], untagged: list[dict], tags, space_id, progress: bool) -> dict:
    """Reliance per model, untagged NLL per model and the forgetting ratio."""
    out: dict = {"reliance": {}, "untagged": {}}
    # one unit per clip scored (each tagged clip is scored in several text variants: it counts once)
    with progress_bar(progress, len(models) * (len(tagged) + len(untagged)), "eval: teacher-forced", "clip") as bar:
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


def _check_family(folder, transfer_dir) -> None:
    """The transfer evaluation hears DVAE codes through the 1.x vocoder: refused for IndexTTS-2."""
    from tagtune.checkpoint import model_family

    if transfer_dir is not None and folder is not None and model_family(folder) == "v2":
        raise EvaluationError(f"{folder} is an IndexTTS-2 model: the transfer evaluation is not available for it "
                              "yet (reliance, forgetting, free-running codes and the judges are)")


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
             progress: bool = True, judges=None, transfer_dir: str | Path | None = None,
             transfer_settings=None, tag_guidance: float = 1.0, base_anchor: bool = False,
             anchor_share: float = 0.0) -> dict:
    """Evaluate a tuned model (folder, or ``base_dir`` + ``adapter``) on DATA_DIR; write and return the report.

    ``n_free`` tagged validation clips are used for free-running generation (0 skips it; ``free_settings``,
    when given, replaces it and the sampling defaults); ``seed`` fixes the prompt choice and the sampling.
    ``base_dir`` adds the base model's numbers and the forgetting ratio; when it lacks the tags it is grown
    with ``tag_init`` rows (seed ``tag_seed``): pass the training recipe's ``lora.tag_init`` and seed.
    ``smoke`` marks a run too small to judge (the demo's quick variant): the report shows its numbers and
    judges no acceptance check. ``progress`` shows a bar with ETA per stage on stderr (when it is a terminal).
    ``judges`` (a ``judges.JudgeSettings``) adds independent judges of the models' speech on a prompt suite.
    ``transfer_dir`` (a data folder prepared from the same base with the same tags, spoken by the fine-tune
    voices and unseen voices in English and Chinese) adds the ``transfer`` section (``transfer.py``;
    ``transfer_settings`` a ``TransferSettings``, whose ``voices_dir`` adds speakers to its speaker embedding).
    ``tag_guidance`` decodes the free-running tagged prompts with tag guidance (``generation/guidance.py``), in
    the main check and the transfer conditions, and ``base_anchor`` starts the tuned model's guided decoding from
    the base model's (it needs ``base_dir``), moved ``anchor_share`` toward the tuned model's own tag-free scores;
    ``free_settings``, when given, carries its own of all three.
    """
    started = time.perf_counter()
    _check_family(model_dir if model_dir is not None else base_dir, transfer_dir)
    if (base_anchor or getattr(free_settings, "base_anchor", False)) and base_dir is None:
        raise EvaluationError("decoding anchored to the base needs the base model: give --base")
    if transfer_dir is None and getattr(transfer_settings, "voices_dir", None):
        raise EvaluationError("more voices for the transfer report's speaker embedding need a transfer set "
                              "(--transfer DATA)")
    try:
        settings = free_settings or FreeRunSettings(n_free, untagged_prompts=max(UNTAGGED_PROMPTS, n_free // 2),
                                                    tag_guidance=tag_guidance, base_anchor=base_anchor,
                                                    anchor_share=anchor_share)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    model_dir = Path(model_dir) if model_dir is not None else None
    tuned, base, tags, space_id = load_models(model_dir, base_dir, adapter, device, tag_init, tag_seed)
    if settings.batch_size is None:  # the report records the rows every batch had
        settings = dataclasses.replace(settings, batch_size=batch_rows(tuned.gpt))
    models = [m for m in (tuned, base) if m is not None]
    panel = _open_judges(judges, tags, model_dir, base_dir, adapter, device) if judges is not None else None
    val = split_items(Path(data_dir), "val")
    by_id = {i: t for t, i in tuned.tag_ids.items()}
    tagged = [it for it in val if any(int(i) in by_id for i in it["text_ids"])]
    untagged = [it for it in val if not any(int(i) in by_id for i in it["text_ids"])]
    if not tagged:
        raise EvaluationError(f"{data_dir}: no validation clip carries one of the tags {list(tags.tags)}")
    sections = _teacher_forced(models, tagged, untagged, tags, space_id, progress)
    train = split_items(Path(data_dir), "train")
    negatives = (generated_negatives(base, train, space_id, settings, seed, progress=progress)
                 if base and settings.prompts else None)
    det, sections["detector"] = train_detector(codebook_of(model_dir, Path(base_dir) if base_dir else None),
                                               train, val, tags, tuned.tag_ids, seed, negatives)
    sections["free"] = None
    if det is not None and settings.prompts > 0:
        sections["free"] = _free_running(models, det, tagged, untagged, tags, space_id, settings, seed, progress)
    meta = {"model": tuned.source, "base": base.source if base else None, "data": str(data_dir), "seed": seed,
            "tags": list(tags.tags), "validation": {"tagged": len(tagged), "untagged": len(untagged)},
            "free_running": settings_dict(settings), "base_tag_rows": base.tag_rows if base else None,
            "seconds": round(time.perf_counter() - started, 2), "smoke": smoke}
    if transfer_dir is not None:
        sections["transfer"] = _transfer(models, transfer_dir, train, model_dir, base_dir, tags, space_id, seed,
                                         transfer_settings, settings, progress)
        meta["transfer_data"] = str(transfer_dir)
        meta["seconds"] = round(time.perf_counter() - started, 2)
    report = build_report(meta, sections)
    if panel is not None:
        from tagtune.evaluate.judges import judge_models

        report["judges"] = judge_models(panel, models, val, train, seed,
                                        (det, sections["detector"].get("held_out")) if det is not None else None)
        report["meta"]["seconds"] = round(time.perf_counter() - started, 2)
    write_report(report, Path(out_dir), plots=plots)
    return report
