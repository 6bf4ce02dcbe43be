"""Feeding UnifiedVoice during generation: the prompt, then mel codes one step at a time.

The prompt follows v1.5.0 ``prepare_gpt_inputs``: each row's text ids lose every start/stop id (0 and 1: this
strips any batch padding), are wrapped again as [start, t…, stop] with text positions 0..n+1, and follow that
row's 32 conditioning latents (or the one shared set). Rows are LEFT-padded with zero vectors to a common
length S = 32 + L + 2 (L = width of the id batch) and the padding is hidden by the key mask, so a row
generates exactly as it would alone.

Codes are then fed after [prompt ‖ start_mel]. Two compute paths give the same numbers (up to fp32 noise):
the backbone's preallocated KV cache, or recomputing the whole sequence every step. Which mel position each
fed code gets is a separate choice:

* ``"official"``: start_mel at position 0 and the k-th generated code at position k+1 (position 1 is never
  used). This is the Tortoise off-by-one of the official KV-cache path (v1.5.0 fp32 and every fp16 run).
* ``"train"``: positions 0, 1, 2, … as in training, the latent pass and the official no-cache path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POSITION_MODES = ("official", "train")
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

    def repeat_rows(self, times: int) -> Prompt:
        """Each row repeated ``times`` times in place (row b -> rows b*times .. b*times+times-1), for beams."""
        return Prompt(*(t.repeat_interleave(times, dim=0) for t in (self.embeds, self.key_mask, self.history)))


def strip_and_wrap(ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """One row of text ids (L,) -> [start, ids without any start/stop id, stop] (n + 2,)."""
    ids = ids.long()
    ids = ids[(ids != start) & (ids != stop)]
    return F.pad(F.pad(ids, (1, 0), value=start), (0, 1), value=stop)


def pad_rows(rows: list[list[int] | torch.Tensor], value: int, device) -> torch.Tensor:
    """Right-pad id rows to a (B, L) long tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.as_tensor(r, dtype=torch.long, device=device)
    return out


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


# ------------------------------------------------------------------------------------------------ decoding

def mel_position(index: int, mode: str) -> int:
    """Mel position of the ``index``-th fed mel input (0 = start_mel, k = the k-th generated code)."""
    return index + 1 if mode == "official" and index > 0 else index


class MelDecoder:
    """Feeds [prompt ‖ start_mel, c1, c2, …] to the model and returns next-code logits (N, V) in fp32.

    ``repeat``: each prompt row is decoded as that many rows (the beams of one text), rows b·repeat .. b·repeat +
    repeat - 1 for prompt row b. With the KV cache the prefill then runs once per prompt row and its keys are
    copied to the row's repeats: the rows are the same input, so the prefill's work need not be done ``repeat``
    times (it is compute-bound, unlike a decode step).
    """

    def __init__(self, model, prompt: Prompt, *, use_cache: bool, position_mode: str, max_new_tokens: int,
                 repeat: int = 1):
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
        self.model, self.mode, self.use_cache, self.repeat = model, position_mode, use_cache, repeat
        rows = prompt.repeat_rows(repeat) if repeat > 1 else prompt
        self.history = rows.history  # (N, 2) HF's fake prompt ids per decoded row
        self.prefix = rows.embeds  # (N, S, D)
        # None when no row is padded: the backbone then takes its plain causal path
        self.key_mask = None if bool(rows.key_mask.all()) else rows.key_mask  # (N, S)
        start = model.cfg.start_mel_token
        self.fed = torch.full((rows.batch, 1), start, dtype=torch.long, device=self.prefix.device)  # (N, k+1)
        self.cache = None
        if use_cache:
            self.cache = model.gpt.new_cache(rows.batch, rows.length + max_new_tokens + 1)

    def start(self) -> torch.Tensor:
        """Logits after [prompt ‖ start_mel] (the prefill)."""
        r = self.repeat
        if r == 1 or self.cache is None:
            return self._logits(torch.cat([self.prefix, self._embed(self.fed, 0)], dim=1))
        firsts = self.cache.every_row(r)  # the first row of each prompt's repeats
        x = torch.cat([self.prefix[::r], self._embed(self.fed[::r], 0)], dim=1)  # (N / r, S+1, D)
        mask = None if self.key_mask is None else self.key_mask[::r]
        logits = self._logits(x, mask, firsts)
        self.cache.length = firsts.length
        self.cache.spread_rows(r)
        return logits.repeat_interleave(r, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one code per row (N,) and return the logits for the next one."""
        self.fed = torch.cat([self.fed, tokens[:, None]], dim=1)
        if self.use_cache:
            return self._logits(self._embed(tokens[:, None], self.fed.shape[1] - 1))
        return self._logits(torch.cat([self.prefix, self._embed(self.fed, 0)], dim=1))

    def reorder(self, index: torch.Tensor) -> None:
        """Make row n continue old row ``index[n]`` (beam search: a row continues a beam of its own prompt)."""
        self.fed = self.fed.index_select(0, index)
        self.prefix = self.prefix.index_select(0, index)
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index)
        if self.cache is not None:
            # the beams of a prompt hold its keys alike: only the positions after the prompt move
            self.cache.reorder(index, start=self.prefix.shape[1])

    def _embed(self, ids: torch.Tensor, first: int) -> torch.Tensor:
        """Mel embeddings of ``ids`` (N, T), the first being fed input number ``first``; (N, T, D)."""
        pos = [mel_position(first + i, self.mode) for i in range(ids.shape[1])]
        return self.model.embed_mel(ids, torch.tensor(pos, device=ids.device))

    def _logits(self, x: torch.Tensor, prompt_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Run the backbone on the new inputs x (n, T, D) of every row (or of the rows of ``prompt_mask`` and
        ``cache`` when given); logits of the last position, (n, V) fp32."""
        key_mask = self.key_mask if cache is None else prompt_mask
        if key_mask is not None:  # real keys: the prompt mask, then every mel input fed so far
            key_mask = torch.cat([key_mask, key_mask.new_ones(key_mask.shape[0], self.fed.shape[1])], dim=1)
        h = self.model.gpt(x, key_mask=key_mask, cache=self.cache if cache is None else cache)  # (n, T, D)
        return self.model.mel_logits_from_hidden(h[:, -1:])[:, 0].float()
