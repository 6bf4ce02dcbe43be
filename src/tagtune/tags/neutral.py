"""Neutral starting rows for new tag tokens: an untrained tag that the base model reads as nothing.

A row made by a formula (``tags.rows``: mean, plain, words) is still a token the base has never seen, and
the base reacts to it: an extra "word" in the sentence changes where it expects the following words, so an
untrained tag already moves the speech around it, by up to ~1.8 nats per event on the shipped tiny base
(docs/tag-init.md). ``fit_neutral_row`` finds one embedding row, shared by every new tag, that the base
treats as if the tag were absent: it inserts " <tag>" at random word starts of UNTAGGED training clips and
minimises KL(p_base(codes | text) || p_base(codes | text with the tag)), teacher-forced on each clip's own
codes. Only that row moves; every base weight stays as it is, and no event audio is ever seen, so the base
learns nothing about any event. Training then starts every tag from the same neutral row (the gradients of
each tag's own clips tell them apart within the first steps).
On IndexTTS-2 the same fit reads each clip's 34-position prefix (speaker latents and emotion vector) and its
semantic codes, all of them counted.

The rows a run starts from are saved as ``tag_init.safetensors`` (embedding, head weight and head bias
rows, ``tags.rows.save_start_rows``) in its weights folders and exports, so ``tagtune eval`` can measure the
untrained base exactly as training began.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
SPACE = "\u2581"  # sentencepiece's word-boundary mark
PROBE_CLIPS = 48  # fixed (clip, insertion point) pairs that report the divergence before and after


@dataclass(frozen=True)
class NeutralFit:
    """Settings of the neutral-row fit (``lora.neutral_*`` in a training recipe)."""

    steps: int = 100
    lr: float = 1e-2
    batch_size: int = 8
    max_clips: int = 1024  # untagged clips drawn from (their speaker latents are computed once)
    seed: int = 0


@dataclass
class Insertion:
    """One untagged clip and where the tag goes: before text id ``at`` (``len(text_ids)`` = at the end)."""

    text_ids: torch.Tensor  # (Lt,)
    codes: torch.Tensor  # (Lc,)
    wav_len: int | None  # samples (1.x: the official rule keeps codes by it); None for IndexTTS-2
    conds: torch.Tensor  # (32, D)
    at: int
    emovec: torch.Tensor | None = None  # (D,) the IndexTTS-2 emotion vector; None for 1.x


def tokenizer_layout(bpe_model: str | Path, spaced_tags: bool) -> tuple[torch.Tensor, int | None]:
    """(word-start mask (V,) bool, id of the bare "▁" piece written before a tag, or None) of a sentencepiece
    model whose tag pieces are ``spaced_tags`` (``TagSet.spaced``).

    A tag typed between words lands before a word-start piece ("▁..."): as one spaced piece, or after a bare
    "▁" piece for bare tag pieces.
    """
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(bpe_model))
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
    space = sp.PieceToId(SPACE)
    return (torch.tensor([p.startswith(SPACE) for p in pieces], dtype=torch.bool),
            None if spaced_tags or space == sp.unk_id() else space)


def untagged_indices(dataset, max_clips: int, seed: int) -> list[int]:
    """Indices of up to ``max_clips`` untagged examples of a PreparedDataset, a seeded random choice."""
    untagged = [i for i, e in enumerate(dataset.examples) if not e["has_tag"]]
    return sorted(random.Random(seed).sample(untagged, min(max_clips, len(untagged))))


def untagged_examples(dataset, max_clips: int, seed: int) -> list[dict]:
    """The examples of ``untagged_indices``."""
    return [dataset[i] for i in untagged_indices(dataset, max_clips, seed)]


def insertion_points(text_ids: torch.Tensor, starts: torch.Tensor) -> list[int]:
    """Indices before which " <tag>" can be typed: every word start after the first, and the end."""
    ids = text_ids.long().tolist()
    return [k for k in range(1, len(ids)) if bool(starts[ids[k]])] + [len(ids)]


def with_tag(text_ids: torch.Tensor, at: int, tag_id: int, space_id: int | None) -> torch.Tensor:
    """The ids with the tag (after its bare "▁" piece, as sentencepiece writes " <tag>") inserted at ``at``."""
    inserted = [tag_id] if space_id is None else [space_id, tag_id]
    return torch.cat([text_ids[:at].long(), torch.tensor(inserted), text_ids[at:].long()])


class _RowOverride(nn.Module):
    """The text embedding with ``row`` in place of every id in ``ids``."""

    def __init__(self, embedding: nn.Embedding, ids: list[int], row: torch.Tensor):
        super().__init__()
        self.embedding, self.row = embedding, row
        self.register_buffer("ids", torch.tensor(ids, device=row.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.embedding(x)
        return torch.where(torch.isin(x, self.ids)[..., None], self.row.to(table.dtype), table)


@contextmanager
def _frozen_eval(gpt: nn.Module, ids: list[int], row: torch.Tensor):
    """``gpt`` in eval mode with no trainable weight and ``row`` as the embedding of ``ids``; restored after."""
    flags = [(p, p.requires_grad) for p in gpt.parameters()]
    was_training, embedding = gpt.training, gpt.text_embedding
    for p, _ in flags:
        p.requires_grad_(False)
    gpt.eval()
    gpt.text_embedding = _RowOverride(embedding, ids, row)
    try:
        yield
    finally:
        gpt.text_embedding = embedding
        for p, flag in flags:
            p.requires_grad_(flag)
        gpt.train(was_training)


def _code_log_probs(gpt, texts: list[torch.Tensor], batch: list[Insertion]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (B, V, L) of each clip's code positions and the (B, L) mask of real ones."""
    cfg, device = gpt.cfg, next(gpt.parameters()).device
    text = pad_sequence(texts, batch_first=True, padding_value=cfg.stop_text_token).to(device)
    text_lengths = torch.tensor([len(t) for t in texts], device=device)
    codes = pad_sequence([b.codes.long() for b in batch], batch_first=True, padding_value=cfg.stop_mel_token)
    conds = torch.stack([b.conds for b in batch]).to(device)
    if batch[0].emovec is not None:  # IndexTTS-2: the prefix adds the emotion vector; codes are counted
        emovec = torch.stack([b.emovec for b in batch]).to(device)
        lengths = torch.tensor([len(b.codes) for b in batch], device=device)
        out = gpt.logits(conds, emovec, text, text_lengths, codes.to(device), lengths, mask_padding=True)
    else:
        kept = max(cfg.kept_codes(b.wav_len) for b in batch)
        codes = F.pad(codes, (0, max(0, kept - codes.shape[1])), value=cfg.stop_mel_token)
        out = gpt.logits(None, text, text_lengths, codes.to(device),
                         torch.tensor([b.wav_len for b in batch], device=device), conds=conds, mask_padding=True)
    n_scored = torch.tensor([len(b.codes) + 1 for b in batch], device=device)  # the codes and the stop code
    mask = torch.arange(out.mel_logits.shape[2], device=device)[None, :] < n_scored[:, None]
    return F.log_softmax(out.mel_logits.float(), dim=1), mask


def divergence(gpt, batch: list[Insertion], tag_id: int, space_id: int | None) -> torch.Tensor:
    """Mean KL (nats per code) from the base's code distribution without the tag to the one with it."""
    with torch.no_grad():
        plain, mask = _code_log_probs(gpt, [b.text_ids.long() for b in batch], batch)
    tagged, _ = _code_log_probs(gpt, [with_tag(b.text_ids, b.at, tag_id, space_id) for b in batch], batch)
    kl = (plain.exp() * (plain - tagged)).sum(dim=1)  # (B, L)
    return (kl * mask).sum() / mask.sum()


def _insertions(clips: list[dict], conds: list, starts: torch.Tensor, rng: random.Random):
    out = []
    for clip, prefix in zip(clips, conds):
        at = rng.choice(insertion_points(clip["text_ids"], starts))
        if isinstance(prefix, tuple):  # IndexTTS-2: (speaker latents, emotion vector)
            out.append(Insertion(clip["text_ids"], clip["codes"], None, prefix[0], at, emovec=prefix[1]))
        else:
            out.append(Insertion(clip["text_ids"], clip["codes"], int(clip["wav_len"]), prefix, at))
    return out


def _probe_kl(gpt, probe: list[Insertion], tag_id: int, space_id, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(probe), batch_size):
            part = probe[s : s + batch_size]
            total += float(divergence(gpt, part, tag_id, space_id)) * len(part)
    return total / max(1, len(probe))


def fit_neutral_row(gpt, tag_ids: list[int], clips: list[dict], conds: list, starts: torch.Tensor,
                    space_id: int | None, settings: NeutralFit = NeutralFit(),
                    progress: bool = False) -> tuple[torch.Tensor, dict]:
    """One embedding row (D,) that makes " <tag>" a no-op for the base; ``gpt``'s weights are left unchanged.

    ``clips`` are untagged prepared examples (``text_ids``, ``codes``, ``wav_len``) and ``conds`` their
    speaker latents (32, D), or for IndexTTS-2 (speaker latents, emotion vector (D,)) pairs; ``starts`` marks
    word-start pieces (``tokenizer_layout``). The row starts at the mean of the current rows of ``tag_ids``.
    Returns the row and a report (divergence in nats per code on fixed probe insertions, before and after).
    ``progress`` shows a bar with ETA on stderr (when it is a terminal).
    """
    if not clips:
        raise ValueError("the neutral tag row needs untagged training clips, and the data has none")
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    with torch.no_grad():
        current = gpt.text_embedding(torch.tensor(tag_ids, device=next(gpt.parameters()).device))  # (n, D)
    row = nn.Parameter(current.float().mean(0).clone())
    probe = _insertions(clips[:PROBE_CLIPS], conds[:PROBE_CLIPS], starts, random.Random(settings.seed + 1))
    tag_id = tag_ids[0]  # every tag reads the same row while fitting
    optimizer = torch.optim.Adam([row], lr=settings.lr)
    with _frozen_eval(gpt, tag_ids, row):
        before = _probe_kl(gpt, probe, tag_id, space_id, settings.batch_size)
        for _ in tqdm(range(settings.steps), desc="neutral tag row", unit="step", dynamic_ncols=True,
                      disable=None if progress else True):
            pick = rng.sample(range(len(clips)), min(settings.batch_size, len(clips)))
            batch = _insertions([clips[i] for i in pick], [conds[i] for i in pick], starts, rng)
            loss = divergence(gpt, batch, tag_id, space_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        after = _probe_kl(gpt, probe, tag_id, space_id, settings.batch_size)
    report = {"kl_per_code_before": before, "kl_per_code_after": after, "steps": settings.steps,
              "clips": len(clips), "row_norm": float(row.detach().norm()),
              "seconds": round(time.perf_counter() - started, 1)}
    log.info("neutral tag row: KL %.5f -> %.5f nats per code in %d steps (%.1f s)", before, after,
             settings.steps, report["seconds"])
    return row.detach().cpu(), report
