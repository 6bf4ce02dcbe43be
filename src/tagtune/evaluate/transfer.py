"""Transfer: do tags learned from one voice in one language work for other voices and in the other language?

A *transfer set* is a prepared data folder (the same base, the same tags) whose clips are spoken by the
fine-tune voice(s) and by voices the model never saw, in English and Chinese, tagged and untagged. Its
validation clips fall into four conditions by speaker and language:

    ft_voice_en   a fine-tune voice, English        unseen_en   any other voice, English
    ft_voice_zh   a fine-tune voice, Chinese        unseen_zh   any other voice, Chinese

The fine-tune voices are the speakers of the fine-tune data folder's training split. Per condition and model
(tuned, base) the free-running check of ``freerun.py`` gives hit rates per tag, the false-event rate and the
placement error; teacher-forced NLL on the condition's untagged clips gives ``untagged_nll_ratio`` (tuned /
base: forgetting of other voices and of Chinese); and a code-level speaker embedding gives the cosine
similarity of each generated sequence to the prompt clip's own recording (its speaker), tuned vs base: drift
toward the fine-tune voice, also split by prompt kind (tagged prompts vs tag-free twins and untagged clips) so
that a drop carried by the generated events' own sound is told apart from a voice that moved.
``transfer_ratio`` = the tuned model's mean hit rate in a condition / its mean hit rate in ``ft_voice_en``.

The judges here are fitted on the transfer set's *training* split, never on the model: the event detector
(with the base's tag-free generations as negatives, as in the main evaluation) and the speaker embedding
(``speaker.py``); both report their held-out accuracy on its validation split.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tagtune.evaluate.freerun import (
    FreeRunSettings,
    anchor_for,
    conditioning_of,
    generate,
    make_prompts,
    score_clips,
    score_recordings,
    summarize_free,
)
from tagtune.evaluate.loading import BASE, TUNED, EvaluationError
from tagtune.evaluate.prepared import generated_negatives, progress_bar, split_items, train_detector

CONDITIONS = ("ft_voice_en", "unseen_en", "ft_voice_zh", "unseen_zh")
REFERENCE_CONDITION = "ft_voice_en"
UNSEEN_CONDITIONS = ("unseen_en", "unseen_zh")
MAX_NLL_CLIPS = 64  # untagged clips per condition scored teacher-forced
TRANSFER_SEED_OFFSET = 20_000  # sampling seeds of the transfer prompts never coincide with the main evaluation's
SIMILARITY_PROMPTS = ("tagged", "tag_free")  # tagged prompts vs their tag-free twins and the untagged clips


@dataclass
class TransferSettings:
    """Prompts per condition (each tagged clip also gives its tag-free twin), the negatives of the detector and
    ``voices_dir``: a data folder prepared from the same base whose clips of more speakers also fit the speaker
    embedding (None: the transfer set's voices alone)."""

    prompts: int = 24
    untagged_prompts: int = 12
    detector_negatives: int = 64
    voices_dir: Path | None = None


def condition(speaker: str, language: str, ft_speakers: set[str]) -> str:
    """The condition of a clip: ``ft_voice`` or ``unseen``, then ``en`` or ``zh``."""
    return f"{'ft_voice' if speaker in ft_speakers else 'unseen'}_{language}"


def by_condition(items: list[dict], ft_speakers: set[str]) -> dict[str, list[dict]]:
    """Items of each condition, in their order (conditions without items are absent)."""
    out: dict[str, list[dict]] = {}
    for it in items:
        out.setdefault(condition(it["speaker"], it["language"], ft_speakers), []).append(it)
    return {c: out[c] for c in CONDITIONS if c in out}


def check_tag_ids(models, transfer_tag_ids: dict[str, int], where: str) -> None:
    """The transfer set must spell each tag with the id the models read it at."""
    want = models[0].tag_ids
    wrong = {t: (transfer_tag_ids.get(t), i) for t, i in want.items() if transfer_tag_ids.get(t) != i}
    if wrong:
        order = ",".join(t.strip("<>") for t, _ in sorted(want.items(), key=lambda kv: kv[1]))
        raise EvaluationError(f"{where}: tag ids {wrong} (transfer set, model) differ; prepare the transfer set "
                              f"from the same base with --tags {order} (in this order)")


def _split_tagged(items: list[dict], tag_ids: set[int]) -> tuple[list[dict], list[dict]]:
    tagged = [it for it in items if any(int(i) in tag_ids for i in it["text_ids"])]
    return tagged, [it for it in items if not any(int(i) in tag_ids for i in it["text_ids"])]


def _similarities(embedding, codes: list[torch.Tensor], refs: list[torch.Tensor]) -> list[float | None]:
    """Cosine of each generated sequence to its reference recording; None where a generation stopped after too few
    codes to have a voice to compare."""
    out: list[float | None] = []
    for seq, ref in zip(codes, refs):
        try:
            out.append(embedding.similarity(seq, ref))
        except ValueError:
            out.append(None)
    return out


def _similarity_means(values: list[float | None], kinds: list[str]) -> dict[str, float | None]:
    """Mean similarity over all prompts (key "all") and per prompt kind, skipped sequences left out."""
    return {k: _mean([v for v, kind in zip(values, kinds) if v is not None and k in ("all", kind)])
            for k in ("all", *SIMILARITY_PROMPTS)}


def _paired_drop_se(tuned: list[float | None], base: list[float | None]) -> dict:
    """Standard error of the mean drop (base - tuned) over the prompts both models gave a voice to: both models
    answer the same prompts, so the prompt-to-prompt spread cancels in the pairs."""
    diffs = torch.tensor([b - t for t, b in zip(tuned, base) if t is not None and b is not None], dtype=torch.float64)
    se = float(diffs.std() / len(diffs) ** 0.5) if len(diffs) > 1 else None
    return {"drop_se": se, "paired_prompts": len(diffs)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _drop(similarity: dict) -> float | None:
    """Base minus tuned similarity (positive: the tuned model's voices moved away from the references)."""
    tuned, base = similarity.get(TUNED), similarity.get(BASE)
    return base - tuned if base is not None and tuned is not None else None


def _hit_rates(summary: dict) -> dict:
    """A ``summarize_free`` summary's hit rate per tag and their ``mean``."""
    return {**{t: v["hit_rate"] for t, v in summary["per_tag"].items()}, "mean": summary["mean_hit_rate"]}


def _condition(models, detector, embedding, items: list[dict], tags, space_id, free: FreeRunSettings,
               settings: TransferSettings, seed: int, bar) -> dict:
    """Free-running numbers, speaker similarity and untagged NLL of both models on one condition's clips."""
    from tagtune.evaluate.forgetting import forgetting_summary, untagged_nll
    from tagtune.evaluate.reliance import score_reliance, summarize

    tag_ids = models[0].tag_ids
    tagged, untagged = _split_tagged(items, set(tag_ids.values()))
    rng = random.Random(seed)
    tagged = rng.sample(tagged, min(settings.prompts, len(tagged)))
    untagged_prompts = rng.sample(untagged, min(settings.untagged_prompts, len(untagged)))
    chosen = tagged + untagged_prompts
    prompts = make_prompts(tagged, untagged_prompts, set(tag_ids.values()), space_id)
    out: dict = {"clips": {"tagged": len(tagged), "untagged": len(untagged_prompts)}}
    # the detector on the condition's recordings themselves: the hit rate its judge gives real events here
    found = score_recordings(detector, prompts, len(tagged), chosen, tags, tag_ids)
    out["real_clips"] = {"hit_rate": _hit_rates(found), "false_event_rate": found["false_event_rate"]}
    kinds = ["tagged" if p.tagged else "tag_free" for p in prompts]
    nll, per_prompt = {}, {}
    conditioning = conditioning_of(models, chosen)
    for m in models:
        codes = generate(m, prompts, chosen, free, seed + TRANSFER_SEED_OFFSET, on_batch=bar.update,
                         anchor=anchor_for(m, models, free), conditioning=conditioning)
        summary = summarize_free(score_clips(detector, prompts, codes, chosen, tags, tag_ids), list(tags.tags))
        per_prompt[m.name] = _similarities(embedding, codes, [chosen[p.item]["codes"] for p in prompts])
        sims = _similarity_means(per_prompt[m.name], kinds)
        out[m.name] = {"hit_rate": _hit_rates(summary),
                       "false_event_rate": summary["false_event_rate"],
                       "false_event_rate_by_prompt": summary["false_event_rate_by_prompt"],
                       "placement_error_ms": summary["placement_error_ms"]["median"],
                       # where the tagged prompts' events went: the right tag, another, or none near the tag
                       "confusion": summary["confusion"]["counts"], "any_event_rate": summary["any_event_rate"],
                       "hit_rate_by_edge": summary["hit_rate_by_edge"],
                       "speaker_similarity": sims["all"],
                       "similarity_clips": sum(v is not None for v in per_prompt[m.name]),
                       "speaker_similarity_by_prompt": {k: sims[k] for k in SIMILARITY_PROMPTS},
                       "mean_generated_codes": _mean([float(len(c)) for c in codes])}
        with torch.inference_mode():  # teacher-forced: what the tags change in this condition's recordings
            gaps = summarize(score_reliance(m, tagged, tags, space_id), list(tags.tags)) if tagged else {}
            if untagged:
                nll[m.name] = untagged_nll(m, untagged[:MAX_NLL_CLIPS])
        out[m.name]["reliance_gap"] = {t: v["reliance_gap"] for t, v in gaps.items()}
        out[m.name]["onset_gap"] = {t: v["onset_gap"] for t, v in gaps.items()}
    forgetting = forgetting_summary(nll[TUNED], nll.get(BASE)) if TUNED in nll else None
    tuned, base = out[TUNED], out.get(BASE) or {}
    out.update({"hit_rate": tuned["hit_rate"], "false_event_rate": tuned["false_event_rate"],
                "reliance_gap": tuned["reliance_gap"], "onset_gap": tuned["onset_gap"],
                "false_event_rate_by_prompt": tuned["false_event_rate_by_prompt"],
                "placement_error_ms": tuned["placement_error_ms"],
                "untagged_nll_ratio": forgetting["untagged_nll_ratio"] if forgetting else None,
                "untagged_nll": forgetting["untagged_nll"] if forgetting else None,
                "speaker_similarity": {TUNED: tuned["speaker_similarity"],
                                       BASE: base.get("speaker_similarity"),
                                       "by_prompt": {k: {TUNED: tuned["speaker_similarity_by_prompt"][k],
                                                         BASE: (base.get("speaker_similarity_by_prompt") or {}).get(k)}
                                                     for k in SIMILARITY_PROMPTS},
                                       **(_paired_drop_se(per_prompt[TUNED], per_prompt[BASE])
                                          if BASE in per_prompt else {})}})
    return out


def _fit_judges(models, codebook, train: list[dict], val: list[dict], tags, space_id, free, settings, seed,
                progress: bool, voices: list[dict]):
    """The event detector, fitted on the transfer set's training split, and the speaker embedding, fitted on that
    split and on ``voices`` (clips of more speakers)."""
    from tagtune.evaluate.speaker import CodeSpeakerEmbedding

    base = next((m for m in models if m.name == BASE), None)
    negatives = (generated_negatives(base, train, space_id, free, seed + TRANSFER_SEED_OFFSET,
                                     n=settings.detector_negatives, progress=progress) if base else None)
    detector, detector_report = train_detector(codebook, train, val, tags, models[0].tag_ids, seed, negatives)
    if detector is None:
        raise EvaluationError("the transfer set has no event boundaries to fit the event detector on")
    embedding = CodeSpeakerEmbedding(codebook)
    embedding_report = embedding.fit([(it["codes"], it["speaker"]) for it in train + voices], seed=seed)
    embedding_report["extra_voice_clips"] = len(voices)
    return detector, detector_report, embedding, embedding_report


def evaluate_transfer(models, codebook: torch.Tensor, train: list[dict], val: list[dict], ft_speakers: set[str],
                      tags, space_id, seed: int = 0, settings: TransferSettings | None = None,
                      free: FreeRunSettings | None = None, progress: bool = False,
                      voices: list[dict] | None = None) -> dict:
    """The ``transfer`` section of report.json: one entry per condition present, plus the judges' reports.

    ``train``/``val``: items of the transfer set's splits (``PreparedDataset`` items: codes, text ids,
    reference mel, speaker, language). ``ft_speakers``: the voices the model was fine-tuned on. ``voices``: clips
    (codes, speaker) of more speakers for the speaker embedding (``open_voice_set``): fitted on the transfer set's
    five or so voices alone, its space has a handful of dimensions, one of them the fine-tune voice's, so any move
    toward that voice weighs heavily and refitting on another split moves a condition's drop by several hundredths.
    """
    settings = settings or TransferSettings()
    # sampled as ``free`` says (the main check's settings, tag guidance included), in the transfer's numbers
    free = replace(free or FreeRunSettings(), prompts=settings.prompts, untagged_prompts=settings.untagged_prompts)
    started = time.perf_counter()
    groups = by_condition(val, ft_speakers)
    if REFERENCE_CONDITION not in groups:
        raise EvaluationError(f"the transfer set has no validation clip of a fine-tune voice ({sorted(ft_speakers)}) "
                              "in English: the transfer ratio needs that reference condition")
    detector, detector_report, embedding, embedding_report = _fit_judges(
        models, codebook, train, val, tags, space_id, free, settings, seed, progress, list(voices or []))
    out: dict = {}
    total = sum(len(models) * (2 * min(settings.prompts, len(_split_tagged(g, set(models[0].tag_ids.values()))[0]))
                               + settings.untagged_prompts) for g in groups.values())
    with progress_bar(progress, total, "eval: transfer", "prompt") as bar:
        for k, (name, items) in enumerate(groups.items()):
            out[name] = _condition(models, detector, embedding, items, tags, space_id, free, settings, seed + k, bar)
    reference = out[REFERENCE_CONDITION]["hit_rate"]["mean"]
    real_reference = out[REFERENCE_CONDITION]["real_clips"]["hit_rate"]["mean"]
    for name in out:
        mean, real = out[name]["hit_rate"]["mean"], out[name]["real_clips"]["hit_rate"]["mean"]
        out[name]["transfer_ratio"] = mean / reference if mean is not None and reference else None
        # the same ratio of the recordings: what the judge itself gives real events across conditions
        out[name]["real_clips"]["transfer_ratio"] = (real / real_reference if real is not None and real_reference
                                                     else None)
        sims = out[name]["speaker_similarity"]
        sims["drop"] = _drop(sims)
        for kind in sims["by_prompt"].values():
            kind["drop"] = _drop(kind)
    out["judges"] = {"detector": detector_report, "speaker_embedding": embedding_report}
    out["fine_tune_voices"] = sorted(ft_speakers)
    out["voices"] = {c: sorted({it["speaker"] for it in items}) for c, items in groups.items()}
    out["settings"] = {"prompts": settings.prompts, "untagged_prompts": settings.untagged_prompts,
                       "detector_negatives": settings.detector_negatives, "max_nll_clips": MAX_NLL_CLIPS,
                       "voices_dir": str(settings.voices_dir) if settings.voices_dir else None}
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def open_voice_set(data_dir: Path, transfer_dir: Path) -> list[dict]:
    """Every clip (both splits) of a data folder prepared from the same base as the transfer set: more voices for
    the speaker embedding (the demo gives its replay corpus: the pre-training voices)."""
    theirs, ours = (_manifest(Path(d)).get("encoders", {}).get("clip") for d in (data_dir, transfer_dir))
    if theirs != ours:
        raise EvaluationError(f"{data_dir}: its codes come from another DVAE ({theirs}) than the transfer set's "
                              f"({ours}); prepare it from the same base")
    return split_items(Path(data_dir), "train") + split_items(Path(data_dir), "val")


def _manifest(data_dir: Path) -> dict:
    import json

    from tagtune.folders import MANIFEST_FILE

    path = data_dir / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: not a prepared data folder ({e})") from None


def open_transfer_set(data_dir: Path, models) -> tuple[list[dict], list[dict]]:
    """Training and validation items of a transfer set, checked against the models' tag ids."""
    from tagtune.folders import MANIFEST_FILE

    manifest = _manifest(Path(data_dir))
    check_tag_ids(models, manifest.get("tag_ids") or {}, str(Path(data_dir) / MANIFEST_FILE))
    return split_items(Path(data_dir), "train"), split_items(Path(data_dir), "val")
