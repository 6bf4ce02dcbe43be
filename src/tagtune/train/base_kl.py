"""The base's own distributions as a training target on replay clips (``replay.base_kl``, IndexTTS 1.x).

Replay clips keep a single-speaker fine-tune close to the base in many voices through their cross-entropy: the
tuned model must still say the codes those voices said. With ``base_kl`` the replay clips as recorded (not the
ones given a spliced event) also add KL(base || tuned) per code: the tuned model must still say what the base
would have said there, every alternative with its probability. The base's log-probabilities are computed once,
before the adapters exist, from each clip's own reference (the conditioning the base had), and kept on the CPU:
codes x vocabulary floats per clip, so this suits corpora and vocabularies of the tiny base's size (the memory
is checked up front against ``MAX_BYTES``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from tagtune.models.unified_voice import IGNORE_INDEX
from tagtune.train.config import TrainConfigError
from tagtune.train.data import ReplayMix, collate, pad_spec
from tagtune.train.loss import Batch

MAX_BYTES = 2 * 2**30  # the stored distributions of every replay clip, at most


def recorded_replay_rows(train) -> list[int]:
    """Dataset indices of the replay clips trained on as recorded (a ``ReplayMix``, possibly wrapped by event
    cuts, whose own indices come first)."""
    mix = getattr(train, "dataset", train)  # event cuts wrap the mix (``WithEventCuts.dataset``)
    if not isinstance(mix, ReplayMix):
        return []
    n = len(mix.primary)
    return [n + j for j, (_, spliced) in enumerate(mix.slots) if not spliced]


@torch.no_grad()
def base_log_probs(gpt, train, rows: list[int], device, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{dataset index: the base's log-probabilities (V, n) of each scored code position, fp32 on the CPU}.

    ``gpt`` must still be the base (before LoRA); rows are right-padded with ``mask_padding``, so each row's
    numbers do not depend on its batch. The scored positions are the ones its cross-entropy reads (the codes and
    the stop code), the first ``n`` of its row."""
    vocab = gpt.cfg.number_mel_codes
    need = sum(vocab * (int(train.examples[i]["n_codes"]) + 3) * 4 for i in rows)
    if need > MAX_BYTES:
        raise TrainConfigError(f"replay.base_kl: the base's distributions of {len(rows)} replay clips would take "
                               f"{need / 2**30:.1f} GB (at most {MAX_BYTES / 2**30:.0f}); use fewer replay clips "
                               "(replay.fraction) or set replay.base_kl to 0")
    was_training = gpt.training
    gpt.eval()
    out = {}
    try:
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            b = collate(train, idx, pad_spec(gpt)).to(device)
            logits = gpt.logits(b.cond_mels, b.text_ids, b.text_lengths, b.codes, b.wav_lengths, b.cond_lengths,
                                mask_padding=True, mask_loss=True)
            log_probs = F.log_softmax(logits.mel_logits.float(), dim=1)  # (B, V, L)
            for k, i in enumerate(idx):
                scored = int((logits.mel_targets[k] != IGNORE_INDEX).sum())
                out[i] = log_probs[k, :, :scored].cpu()
    finally:
        gpt.train(was_training)
    return out


def attach(batch: Batch, store: dict[int, torch.Tensor], indices: list[int]) -> Batch:
    """``batch`` (of ``indices``) with the stored base distributions of its rows padded to its code positions."""
    rows = [store.get(i) for i in indices]
    if all(r is None for r in rows):
        return batch
    width = batch.codes.shape[1] + 2  # the mel targets: codes, stop, stop
    vocab = next(r for r in rows if r is not None).shape[0]
    padded = torch.zeros(len(rows), vocab, width)
    for k, r in enumerate(rows):
        if r is not None:
            padded[k, :, : r.shape[1]] = r
    has = torch.tensor([r is not None for r in rows])
    device = batch.codes.device
    return dataclasses.replace(batch, base_log_probs=padded.to(device), base_rows=has.to(device))

