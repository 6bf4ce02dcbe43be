"""After generation: trim codes at stop_mel, shorten long silences (spec §7.3), then the latent pass (§7.4)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

SILENT_TOKEN = 52  # the DVAE code of digital silence, hard-coded in the official post-processing
MAX_CONSECUTIVE = 30  # more silent codes than this in a row (counted over the WHOLE row) triggers the fix
KEPT_SILENT_RUN = 10  # each run of silent codes is cut to at most this many


def remove_long_silence(codes: torch.Tensor, silent_token: int = SILENT_TOKEN, max_consecutive: int = MAX_CONSECUTIVE,
                        *, stop_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``IndexTTS.remove_long_silence`` on codes (B, T); returns (codes (B, T'), lengths (B,)).

    Per row, ``len`` is the index of the first stop (or T). When the row holds more than ``max_consecutive``
    silent codes ANYWHERE (past its stop too, as officially counted), its first ``len`` codes keep every
    non-silent code and at most 10 codes of each silent run; otherwise the row is just cut at ``len``.
    If any row was shortened, rows are re-padded with ``stop_token`` (a single row is returned as is); if
    none was, the input rows are kept unchanged. Finally everything is clipped to the longest length.
    """
    rows, lengths, fixed = [], [], False
    for code in codes:
        n = _stop_index(code, stop_token)
        if int((code == silent_token).sum()) > max_consecutive:
            code = code[_keep_short_runs(code[:n], silent_token)]
            fixed = True
        else:
            code = code[:n]
        rows.append(code)
        lengths.append(code.shape[0])
    if fixed:
        codes = rows[0][None] if len(rows) == 1 else pad_sequence(rows, batch_first=True, padding_value=stop_token)
    longest = max(lengths)
    if longest < codes.shape[1]:
        codes = codes[:, :longest]
    return codes, torch.tensor(lengths, dtype=torch.long, device=codes.device)


def _stop_index(code: torch.Tensor, stop_token: int) -> int:
    """Index of the first ``stop_token`` in a row (T,), or T."""
    hits = (code == stop_token).nonzero()
    return int(hits[0]) if len(hits) else code.shape[0]


def _keep_short_runs(code: torch.Tensor, silent_token: int) -> torch.Tensor:
    """Indices (M,) of the codes kept: all non-silent ones and the first 10 of every silent run."""
    keep, run = [], 0
    for k, c in enumerate(code.tolist()):
        if c != silent_token:
            keep.append(k)
            run = 0
        elif run < KEPT_SILENT_RUN:
            keep.append(k)
            run += 1
    return torch.tensor(keep, dtype=torch.long, device=code.device)


@torch.no_grad()
def latents_for_vocoder(model, conds: torch.Tensor, text_ids: torch.Tensor, codes: torch.Tensor,
                        code_lens: torch.Tensor) -> torch.Tensor:
    """The official latent pass (§2.5 / §7.4): GPT hidden states for BigVGAN, (B, N, D) for codes (B, N).

    Training positions and layout, ``wav_lengths = code_lens · 1024`` (so one code past each length is kept,
    the rest becomes stop_mel), text ids taken whole as the official unbatched call does. ``conds`` may be a
    single shared (1, 32, D). Latent k is the state that predicts code k+1.
    """
    B = codes.shape[0]
    conds = conds.expand(B, -1, -1) if conds.shape[0] == 1 else conds
    text_ids = text_ids.expand(B, -1) if text_ids.shape[0] == 1 else text_ids
    return model.latents(conds, text_ids.long(), codes.long(), code_lengths=code_lens.to(codes.device))
