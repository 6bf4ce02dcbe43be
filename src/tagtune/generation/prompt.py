"""The generation prompt: [left padding ‖ conds ‖ start_text, text, stop_text] as v1.5.0 ``prepare_gpt_inputs``.

Each row's text ids lose every start/stop id (0 and 1: this strips any batch padding), are wrapped again as
[start, t…, stop] with text positions 0..n+1, and follow that row's 32 conditioning latents (or the one shared
set). Rows are then LEFT-padded with zero vectors to a common length S = 32 + L + 2 (L = width of the id batch)
and the padding is hidden by the key mask, so a row generates exactly as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FAKE_PROMPT_ID = 1  # HF's input ids for the prompt are all ones (then start_mel)


@dataclass
class Prompt:
    """Prompt embeddings for the backbone and what HF's ``generate`` would have seen as input ids."""

    embeds: torch.Tensor  # (B, S, D) [zeros ‖ conds ‖ text segment]
    key_mask: torch.Tensor  # (B, S) bool, False on the left padding
    history: torch.Tensor  # (B, 2) the ids of HF's fake prompt: [1, start_mel]

    @property
    def batch(self) -> int:
        return self.embeds.shape[0]

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

    def repeat_rows(self, times: int) -> "Prompt":
        """Each row repeated ``times`` times in place (row b -> rows b*times .. b*times+times-1), for beams."""
        return Prompt(*(t.repeat_interleave(times, dim=0) for t in (self.embeds, self.key_mask, self.history)))

    def select_rows(self, index: torch.Tensor) -> "Prompt":
        """Rows reordered / selected by ``index`` (N,)."""
        return Prompt(*(t.index_select(0, index) for t in (self.embeds, self.key_mask, self.history)))


def strip_and_wrap(ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """One row of text ids (L,) -> [start, ids without any start/stop id, stop] (n + 2,)."""
    ids = ids.long()
    ids = ids[(ids != start) & (ids != stop)]
    return F.pad(F.pad(ids, (1, 0), value=start), (0, 1), value=stop)


def prepare_prompt(model, conds: torch.Tensor, text_ids: torch.Tensor) -> Prompt:
    """Build the prompt from conds (1 or B, 32, D) and text ids (B, L) (right-padded with 1 in v1.5 batches).

    The fake ids HF saw are S ones followed by start_mel; only the set {1, start_mel} matters to the
    repetition penalty, so that is what ``history`` keeps (mel codes 1 and start_mel are penalised at once).
    """
    cfg = model.cfg
    B, L = text_ids.shape
    if conds.shape[0] not in (1, B):
        raise ValueError(f"conds batch {conds.shape[0]} does not match text batch {B}")
    n_cond, D = conds.shape[1], conds.shape[2]
    S = n_cond + L + 2
    rows, masks = [], []
    for b in range(B):
        ids = strip_and_wrap(text_ids[b].to(conds.device), cfg.start_text_token, cfg.stop_text_token)
        text = model.embed_text(ids[None])[0]  # (n + 2, D)
        cond = conds[0] if conds.shape[0] == 1 else conds[b]  # (32, D)
        pad = S - n_cond - text.shape[0]
        rows.append(torch.cat([conds.new_zeros(pad, D), cond, text]))
        masks.append(torch.arange(S, device=conds.device) >= pad)
    history = torch.tensor([[FAKE_PROMPT_ID, cfg.start_mel_token]], device=conds.device).expand(B, 2)
    return Prompt(torch.stack(rows), torch.stack(masks), history)
