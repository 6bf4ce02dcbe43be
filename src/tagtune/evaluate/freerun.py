"""Free-running check: generate from paired prompts with and without the tags and look for the events.

Each tagged validation clip gives two prompts with its own speaker reference: its text, and its text with
every tag removed. Untagged validation clips add more tag-free prompts. Codes are sampled (greedy decoding
loops) in seeded batches, and the code-level detector looks for events. A tag scores a *hit* when an event of
the right kind starts near where the tag's event should be: the reference clip's event onset (or the tag's
place in the text) scaled to the generated length, within HIT_TOLERANCE_S or a quarter of the clip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from tagtune.audio import SAMPLE_RATE, SAMPLES_PER_CODE
from tagtune.evaluate.detector import NONE, CodeEventDetector
from tagtune.evaluate.loading import BASE, TUNED, EvaluationError
from tagtune.evaluate.nll import generation_prefix, item_conditioning
from tagtune.tags.occurrences import occurrences, without_tag

HIT_TOLERANCE_S = 1.0
TOLERANCE_FRACTION = 0.25
LENGTH_FACTOR = 1.5  # max_new_tokens = LENGTH_FACTOR x the longest reference clip of the batch (+ margin)
LENGTH_MARGIN = 8
MS_PER_CODE = 1000.0 * SAMPLES_PER_CODE / SAMPLE_RATE
# where a tag's event sits in its recording: within EDGE_S of the start (nothing said before it) or of the end
# (nothing after it: the decoder must make the event instead of stopping), or inside the speech
EDGE_S = 0.3
EDGES = ("leading", "inside", "trailing")
# the two kinds of tag-free prompt, as report keys -> the scored lists that hold their false-event flags
FALSE_EVENT_PROMPTS = {"tag_free_twins": "twin_flags", "untagged_clips": "untagged_flags"}


@dataclass
class FreeRunSettings:
    """Sampling for the free-running check (official top-k/top-p; one beam keeps batches cheap)."""

    prompts: int = 48  # tagged validation clips used (each gives a tagged and a tag-free prompt)
    untagged_prompts: int = 24  # untagged validation clips added as tag-free prompts
    batch_size: int | None = None  # rows per decode; None: ``batch_rows`` of the model
    top_k: int = 30
    top_p: float = 0.8
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    position_mode: str = "train"  # training positions, as tagtune synthesis uses by default
    tag_guidance: float = 1.0  # tagged prompts decode against their tag-free twins (generation/guidance.py); 1 = off
    base_anchor: bool = False  # the tuned model's guided decoding starts from the base model (generation/guidance.py)
    anchor_share: float = 0.0  # with base_anchor: how far that start moves toward the tuned model's own (guidance.py)
    guide_until_onset: bool = True  # guidance stops at the onset of the event it asked for (guidance.py)

    def __post_init__(self):
        from tagtune.generation.guidance import check_anchor_share, check_tag_guidance

        self.tag_guidance = check_tag_guidance(self.tag_guidance)
        self.anchor_share = check_anchor_share(self.anchor_share)
        if self.anchor_share and not self.base_anchor:
            raise ValueError("an anchor share moves the start of decoding anchored to the base: it needs base_anchor "
                             "(--base-anchor)")

    def generation_config(self, max_new_tokens: int):
        from tagtune.generation import GenerationConfig

        return GenerationConfig(do_sample=True, num_beams=1, top_k=self.top_k, top_p=self.top_p,
                                temperature=self.temperature, repetition_penalty=self.repetition_penalty,
                                max_new_tokens=max_new_tokens, position_mode=self.position_mode,
                                tag_guidance=self.tag_guidance, anchor_share=self.anchor_share,
                                guide_until_onset=self.guide_until_onset)


MAX_BATCH_ROWS = 64
CACHE_BUDGET_BYTES = 4 * 2**30  # KV cache of one batch at most: 64 rows of the tiny bases, 12 of full-size v1.5


def batch_rows(gpt) -> int:
    """Rows per free-running batch for ``gpt``: as many as the KV cache budget holds at the longest sequence, up
    to MAX_BATCH_ROWS. A decode step of a small model costs nearly as much for 16 rows as for 64 (its time is
    per step more than per row): on the tiny base, 64 like-length rows decode x1.62 faster per prompt than 16 in
    prompt order, x1.18 of it from the like lengths (``bench/bench_freerun.py``, two threads)."""
    longest = gpt.mel_pos_embedding.emb.num_embeddings + gpt.text_pos_embedding.emb.num_embeddings + 34
    trunk = gpt.gpt
    per_row = 2 * len(trunk.h) * trunk.dim * longest * trunk.ln_f.weight.element_size()
    return max(1, min(MAX_BATCH_ROWS, CACHE_BUDGET_BYTES // per_row))


@dataclass
class Prompt:
    item: int  # index into the clip list
    text_ids: torch.Tensor
    tagged: bool
    twin: bool = False  # a tagged clip's text with its tags removed (not an untagged clip's own text)
    free_ids: torch.Tensor | None = None  # the text without its tags, for tag guidance; None: ``text_ids``

    @property
    def tag_free_ids(self) -> torch.Tensor:
        return self.text_ids if self.free_ids is None else self.free_ids


def strip_tags(text_ids: torch.Tensor, tag_ids: set[int], space_id: int | None) -> torch.Tensor:
    """Text ids with every tag (and the bare "▁" before it) removed."""
    k = len(text_ids) - 1
    while k >= 0:  # right to left, so removals never shift the positions still to visit
        if int(text_ids[k]) in tag_ids:
            text_ids = without_tag(text_ids, k, space_id)
        k = min(k - 1, len(text_ids) - 1)
    return text_ids


def make_prompts(tagged: list[dict], untagged: list[dict], tag_ids: set[int], space_id) -> list[Prompt]:
    """Tagged prompt + its tag-free twin for each tagged clip, then the untagged clips (items are tagged+untagged)."""
    prompts = []
    for k, it in enumerate(tagged):
        free = strip_tags(it["text_ids"], tag_ids, space_id)
        prompts.append(Prompt(k, it["text_ids"], True, free_ids=free))
        prompts.append(Prompt(k, free, False, twin=True))
    prompts += [Prompt(len(tagged) + k, it["text_ids"], False) for k, it in enumerate(untagged)]
    return prompts


def anchor_for(model, models, settings: FreeRunSettings):
    """The model ``model``'s guided decoding starts from: the base among ``models`` for the tuned model when
    ``settings.base_anchor``, else None."""
    if not settings.base_anchor or model.name != TUNED:
        return None
    base = next((m for m in models if m.name == BASE), None)
    if base is None:
        raise EvaluationError("decoding anchored to the base needs the base model: give the base as well")
    return base


def score_recordings(detector: CodeEventDetector, prompts: list[Prompt], n_tagged: int, items: list[dict], tags,
                     tag_ids: dict[str, int]) -> dict:
    """``summarize_free`` of the detector on the prompt clips' own recordings: the tagged prompts' and the untagged
    clips' (``items[:n_tagged]`` are the tagged clips; a tag-free twin's recording still holds its event)."""
    real = [p for p in prompts if p.tagged or p.item >= n_tagged]
    return summarize_free(score_clips(detector, real, [items[p.item]["codes"] for p in real], items, tags, tag_ids),
                          list(tags.tags))


@torch.no_grad()
def conditioning_of(models, items: list[dict]) -> dict[str, list]:
    """Each model's ``item_conditioning`` of ``items`` by model name: computed once for a model's own decoding
    and for the anchor it lends another model's."""
    return {m.name: item_conditioning(m.gpt, items) for m in models}


@torch.no_grad()
def generate(model, prompts: list[Prompt], items: list[dict], settings: FreeRunSettings,
             seed: int, on_batch: Callable[[int], object] | None = None, anchor=None,
             conditioning: dict | None = None) -> list[torch.Tensor]:
    """Sampled codes (without the stop code) for every prompt, in prompt order; batch b draws from seed + b.

    Batches take the prompts in order of their reference clip's length (stable, so a tagged prompt and its
    tag-free twin sit side by side): a batch decodes until its longest row stops, and rows of like length stop
    together. ``on_batch(n)`` is told after each batch how many prompts it finished (a progress bar's
    ``update``). ``anchor``: the base model the guided decoding starts from (``settings.base_anchor``), or None.
    ``conditioning``: ``conditioning_of`` the models over ``items``, when the caller already has it."""
    from tagtune.generation import generate_codes
    from tagtune.generation.guidance import Anchor

    conditioning = conditioning or conditioning_of([model] if anchor is None else [model, anchor], items)
    conds = conditioning[model.name]
    anchor_conds = None if anchor is None else conditioning[anchor.name]
    limit = model.gpt.mel_pos_embedding.emb.num_embeddings - 2
    size = settings.batch_size or batch_rows(model.gpt)
    order = sorted(range(len(prompts)), key=lambda i: len(items[prompts[i].item]["codes"]))
    out: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(prompts)
    for b, s in enumerate(range(0, len(order), size)):
        picked = order[s : s + size]
        part = [prompts[i] for i in picked]
        longest = max(len(items[p.item]["codes"]) for p in part)
        cfg = settings.generation_config(min(limit, int(LENGTH_FACTOR * longest) + LENGTH_MARGIN))
        text = pad_sequence([p.text_ids.long() for p in part], batch_first=True, padding_value=model.stop_text)
        free = pad_sequence([p.tag_free_ids.long() for p in part], batch_first=True, padding_value=model.stop_text)
        device = next(model.gpt.parameters()).device
        prefix = generation_prefix(model.gpt, [conds[p.item] for p in part]).to(device)  # (B, 32 or 34, D)
        g = torch.Generator(device=device).manual_seed(seed + b)
        base = None if anchor is None else Anchor(anchor.gpt, generation_prefix(anchor.gpt, [anchor_conds[p.item]
                                                                                              for p in part]))
        codes, lengths = generate_codes(model.gpt, text.to(device), cfg, conds=prefix, generator=g,
                                        free_ids=free.to(device), anchor=base)
        for k, (i, n) in enumerate(zip(picked, lengths, strict=True)):
            out[i] = codes[k, : int(n)].cpu()
        if on_batch is not None:
            on_batch(len(part))
    return out


def _tolerance(n_codes: int, ms_per_code: float = MS_PER_CODE) -> float:
    return max(HIT_TOLERANCE_S * 1000.0 / ms_per_code, TOLERANCE_FRACTION * n_codes)


def _edge(span: tuple[int, int] | None, n_codes: int, ms_per_code: float) -> str | None:
    """``EDGES`` entry of an event's code span in its recording (None without recorded boundaries)."""
    if span is None:
        return None
    edge = round(EDGE_S * 1000.0 / ms_per_code)
    return "leading" if span[0] <= edge else "trailing" if n_codes - span[1] <= edge else "inside"


def score_clips(detector: CodeEventDetector, prompts: list[Prompt], codes: list[torch.Tensor], items: list[dict],
                tags, tag_ids: dict[str, int]) -> dict:
    """Per-trial hits and per-prompt false events from detections on ``codes`` (one sequence per prompt).

    ``false_flags`` pools every tag-free prompt; ``twin_flags`` and ``untagged_flags`` split them into the
    tag-free twins of tagged clips (their text was written around a tag) and the untagged clips' own texts."""
    trials, false_flags, any_flags, twin_flags, untagged_flags = [], [], [], [], []
    for prompt, seq in zip(prompts, codes):
        found = detector.detect(seq)
        if not prompt.tagged:
            false_flags.append(bool(found))
            (twin_flags if prompt.twin else untagged_flags).append(bool(found))
            continue
        any_flags.append(bool(found))
        item = items[prompt.item]
        ms_per_code = 1000.0 * item.get("samples_per_code", SAMPLES_PER_CODE) / SAMPLE_RATE  # IndexTTS-2: 20 ms
        for occ in occurrences(item, prompt.item, tags, tag_ids):
            expected = occ.onset_fraction * len(seq)
            near = [d for d in found if abs(d.onset - expected) <= _tolerance(len(seq), ms_per_code)]
            best = min(near, key=lambda d: abs(d.onset - expected)) if near else None
            trials.append({"tag": occ.tag, "detected": best.tag if best else NONE,
                           "error_ms": abs(best.onset - expected) * ms_per_code if best else None,
                           "edge": _edge(occ.span, len(item["codes"]), ms_per_code)})
    return {"trials": trials, "false_flags": false_flags, "any_flags": any_flags, "twin_flags": twin_flags,
            "untagged_flags": untagged_flags}


def summarize_free(scored: dict, tag_names: list[str]) -> dict:
    """hit_rate per tag, mean_hit_rate, any_event_rate, false_event_rate, confusion matrix, placement error, and
    the hit rate by where the event sits in its recording (``EDGES``; trials without boundaries are left out)."""
    trials = scored["trials"]
    per_tag, errors = {}, []
    for tag in tag_names:
        mine = [t for t in trials if t["tag"] == tag]
        hits = [t for t in mine if t["detected"] == tag]
        errors += [t["error_ms"] for t in hits]
        per_tag[tag] = {"trials": len(mine), "hit_rate": len(hits) / len(mine) if mine else None,
                        "placement_error_ms": _median([t["error_ms"] for t in hits])}
    rates = [v["hit_rate"] for v in per_tag.values() if v["hit_rate"] is not None]
    columns = [*tag_names, NONE]
    confusion = {tag: {c: sum(t["tag"] == tag and t["detected"] == c for t in trials) for c in columns}
                 for tag in tag_names}
    return {
        "per_tag": per_tag,
        "mean_hit_rate": sum(rates) / len(rates) if rates else None,
        "any_event_rate": _rate(scored["any_flags"]),
        "false_event_rate": _rate(scored["false_flags"]),
        "false_event_rate_by_prompt": {kind: {"rate": _rate(scored.get(key, [])), "prompts": len(scored.get(key, []))}
                                       for kind, key in FALSE_EVENT_PROMPTS.items()},
        "tagged_prompts": len(scored["any_flags"]),
        "untagged_prompts": len(scored["false_flags"]),
        "confusion": {"rows": tag_names, "columns": columns, "counts": confusion},
        "placement_error_ms": {"median": _median(errors), "mean": sum(errors) / len(errors) if errors else None},
        "hit_rate_by_edge": {edge: _hits_at(trials, edge) for edge in EDGES},
    }


def _hits_at(trials: list[dict], edge: str) -> dict:
    """Trials and hit rate of the trials whose event sits at ``edge`` of its recording."""
    mine = [t["detected"] == t["tag"] for t in trials if t.get("edge") == edge]
    return {"trials": len(mine), "hit_rate": _rate(mine)}


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def settings_dict(settings: FreeRunSettings) -> dict:
    return {**asdict(settings), "hit_tolerance_s": HIT_TOLERANCE_S, "tolerance_fraction": TOLERANCE_FRACTION}
