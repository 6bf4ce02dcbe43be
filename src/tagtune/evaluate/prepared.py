"""Prepared data as evaluation reads it, and the code-level event detector fitted on it.

``split_items`` loads a split of a prepared DATA_DIR as items (codes, text ids, reference mel, speaker,
language); ``train_detector`` fits the code-level event detector on a training split, with the base's tag-free
generations as negatives (``generated_negatives``). The main evaluation and the transfer evaluation both use
them.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tagtune.audio import SAMPLES_PER_CODE
from tagtune.data import PreparedDataset
from tagtune.evaluate.detector import CodeEventDetector, choose_window
from tagtune.evaluate.freerun import FreeRunSettings, Prompt, generate, strip_tags
from tagtune.evaluate.loading import EvaluationError
from tagtune.tags.occurrences import occurrences

MAX_DETECTOR_CLIPS = 2000
GENERATED_NEGATIVES = 160  # training clips whose tag-free text the base speaks as the detector's negatives
NEGATIVES_SEED_OFFSET = 10_000  # their sampling seeds never coincide with the evaluation's


def split_items(data_dir: Path, split: str) -> list[dict]:
    """Every item of ``split`` ("train" or "val") of a prepared DATA_DIR (IndexTTS-2 data: ``PreparedDatasetV2``'s
    items, with speaker and emotion clip features in place of the reference mel)."""
    from tagtune.data.dataset import PreparedDatasetV2

    try:
        ds = PreparedDataset(data_dir, split)
        if ds.manifest.get("model_family") == "v2":
            ds = PreparedDatasetV2(data_dir, split)
    except FileNotFoundError as e:
        raise EvaluationError(str(e)) from None
    return [ds[i] for i in range(len(ds))]


def event_clips(items: list[dict], tags, tag_ids) -> list[tuple[torch.Tensor, list]]:
    """(codes, [(tag, first, last)]) of untagged clips and of tagged clips whose events match their tags."""
    out = []
    for c, it in enumerate(items):
        occs = occurrences(it, c, tags, tag_ids)
        if all(o.span is not None for o in occs):
            out.append((it["codes"], [(o.tag, *o.span) for o in occs]))
    return out


def codebook_of(model_dir: Path | None, base_dir: Path | None) -> torch.Tensor:
    """The vectors the detector describes codes by (n_codes, dim): the DVAE codebook, or on IndexTTS-2 the
    semantic codec's L2-normalised codebook (the codec picks codes by cosine)."""
    from tagtune.checkpoint import load_dvae, model_family

    folder = model_dir if model_dir is not None and (model_dir / "config.yaml").is_file() else base_dir
    if model_family(folder) == "v2":
        from tagtune.loaders import load_model

        book = load_model(folder).semantic_codec.quantizer.quantizers[0].codebook.weight  # (n_codes, dim)
        return torch.nn.functional.normalize(book.detach().float()).contiguous()
    return load_dvae(folder).codebook.embed.t().contiguous()  # (n_codes, dim)


def progress_bar(progress: bool, total: int, desc: str, unit: str):
    """A progress bar with ETA on stderr (off with ``progress=False``, and when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if progress else True, dynamic_ncols=True)


def generated_negatives(base, train: list[dict], space_id, settings: FreeRunSettings, seed: int,
                        n: int = GENERATED_NEGATIVES, progress: bool = False) -> list[torch.Tensor]:
    """Codes ``base`` (an EvalModel that never emits events) samples for ``n`` tag-free training prompts."""
    picks = random.Random(seed + NEGATIVES_SEED_OFFSET).sample(train, min(n, len(train)))
    tag_ids = set(base.tag_ids.values())
    prompts = [Prompt(k, strip_tags(it["text_ids"], tag_ids, space_id), False) for k, it in enumerate(picks)]
    with progress_bar(progress, len(prompts), "eval: detector negatives", "prompt") as bar:
        return generate(base, prompts, picks, settings, seed + NEGATIVES_SEED_OFFSET, on_batch=bar.update)


def train_detector(codebook, train: list[dict], val: list[dict], tags, tag_ids, seed: int,
                   negatives: list[torch.Tensor] | None = None):
    """The code-level event detector and its report (None when the corpus has no event boundaries)."""
    fit_clips = event_clips(train, tags, tag_ids)
    if not any(spans for _, spans in fit_clips):
        return None, {"available": False, "reason": "the corpus has no event boundaries"}
    random.Random(seed).shuffle(fit_clips)
    fit_clips = fit_clips[:MAX_DETECTOR_CLIPS]
    window = choose_window([b - a for _, spans in fit_clips for _, a, b in spans],
                           train[0].get("samples_per_code", SAMPLES_PER_CODE))  # IndexTTS-2 items name their rate
    det = CodeEventDetector(codebook, list(tags.tags), window)
    counts = det.fit(fit_clips, seed, negatives)
    return det, {"available": True, "window_codes": window, "min_run_windows": det.min_run, "train_windows": counts,
                 "generated_negatives": len(negatives or []),
                 "held_out": det.accuracy(event_clips(val, tags, tag_ids))}
