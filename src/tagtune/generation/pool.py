"""Continuous batching: the decode steps of several requests in one backbone call; requests join and leave
between steps.

Layout (padding with key masks): one KV cache whose columns all rows share; every step writes column
``length`` for every row. A request (a "member": its rows, e.g. sentences x beams) is prefilled on its own,
exactly as ``MelDecoder.start`` does, and its keys are copied in so that they END at the current column;
the columns before a member's first key are masked out for its rows. Each row keeps its own mel positions, so
the numbers are those of the row decoded alone (up to float rounding of a different batch shape).

Why padding rather than recomputing on join: a join then costs one prefill of the newcomer plus a copy of the
cache, and no other row recomputes anything. The price is masked columns: a row that joins late attends over
the padding of rows that joined early; ``_compact`` drops columns that no row uses once their owners leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tagtune.generation.decoder import MelDecoder, Prompt, mel_position

HEADROOM = 128  # columns allocated ahead, so most steps write without reallocating


@dataclass(eq=False)  # members are told apart by identity: two may hold equal fields
class Member:
    """One request's rows in the pool."""

    rows: int
    position_mode: str
    fed: int = 1  # mel inputs fed so far (start_mel is input 0)


class DecodePool:
    """Rows of many members decoded together on ``model`` (a UnifiedVoice, or anything with its decode parts)."""

    def __init__(self, model):
        self.model = model
        self.members: list[Member] = []
        self.cache = None  # KVCache over all rows; cache.length = columns in use
        self.key_mask = None  # (N, capacity) bool

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.members)

    @property
    def length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def _offset(self, member: Member) -> int:
        out = 0
        for m in self.members:
            if m is member:
                return out
            out += m.rows
        raise KeyError("not a member of this pool")

    @torch.no_grad()
    def join(self, prompt: Prompt, position_mode: str, max_new_tokens: int,
             repeat: int = 1) -> tuple[Member, torch.Tensor]:
        """Prefill a new member's rows (each prompt row ``repeat`` times, as ``MelDecoder`` does); returns it and its
        first logits (rows, V) fp32."""
        own = MelDecoder(self.model, prompt, use_cache=True, position_mode=position_mode, max_new_tokens=0,
                         repeat=repeat)
        logits = own.start()
        width = own.cache.length  # S + 1 columns
        rows = own.history.shape[0]
        mask = own.key_mask if own.key_mask is not None else own.prefix.new_ones(rows, width - 1, dtype=torch.bool)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)  # (n, S+1): start_mel is real
        member = Member(rows, position_mode)
        self._insert(own.cache, mask, width, max_new_tokens)
        self.members.append(member)
        return member, logits

    def _insert(self, cache, mask: torch.Tensor, width: int, max_new_tokens: int) -> None:
        """Rebuild the pool cache with the newcomer's ``width`` columns ending at the current column."""
        old_len, old_rows = self.length, self.rows
        length = max(old_len, width)
        capacity = length + max(HEADROOM, max_new_tokens + 1)
        if self.cache is not None:
            capacity = max(capacity, self.cache.max_len + (length - old_len))
        fresh = self.model.gpt.new_cache(old_rows + mask.shape[0], capacity)
        key_mask = torch.zeros(old_rows + mask.shape[0], capacity, dtype=torch.bool, device=mask.device)
        for name in ("k", "v"):
            for layer, dst in enumerate(getattr(fresh, name)):
                if old_rows:
                    dst[:old_rows, :, length - old_len : length] = getattr(self.cache, name)[layer][:, :, :old_len]
                dst[old_rows:, :, length - width : length] = getattr(cache, name)[layer][:, :, :width]
        if old_rows:
            key_mask[:old_rows, length - old_len : length] = self.key_mask[:, :old_len]
        key_mask[old_rows:, length - width : length] = mask
        fresh.length = length
        self.cache, self.key_mask = fresh, key_mask

    @torch.no_grad()
    def step(self, tokens: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Feed one code per row of every member (``tokens[id(member)]`` (rows,)); next logits per member."""
        ids, positions = [], []
        for m in self.members:
            ids.append(tokens[id(m)])
            positions += [mel_position(m.fed, m.position_mode)] * m.rows
        x = self.model.embed_mel(torch.cat(ids)[:, None], torch.tensor(positions, device=self.key_mask.device)[:, None])
        if self.length == self.cache.max_len:
            self._grow()
        self.key_mask[:, self.length] = True
        h = self.model.gpt(x, key_mask=self.key_mask, cache=self.cache)  # (N, 1, D)
        logits = self.model.mel_logits_from_hidden(h)[:, 0].float()  # (N, V)
        out, start = {}, 0
        for m in self.members:
            m.fed += 1
            out[id(m)] = logits[start : start + m.rows]
            start += m.rows
        return out

    def reorder(self, member: Member, index: torch.Tensor) -> None:
        """Row r of ``member`` continues its old row ``index[r]`` (beam search)."""
        off = self._offset(member)
        rows = index + off
        self.cache.move_rows(torch.arange(off, off + member.rows, device=rows.device), rows)
        self.key_mask[off : off + member.rows] = self.key_mask[rows]

    def leave(self, member: Member) -> None:
        """Drop a member's rows (finished or cancelled)."""
        off = self._offset(member)
        self.members.remove(member)
        if not self.members:
            self.cache = self.key_mask = None
            return
        keep = torch.cat([torch.arange(off), torch.arange(off + member.rows, off + member.rows + self.rows - off)])
        for buf in (self.cache.k, self.cache.v):
            for i, t in enumerate(buf):
                buf[i] = t[keep]
        self.key_mask = self.key_mask[keep]
        self._compact()

    def _compact(self) -> None:
        """Drop leading columns no remaining row attends to."""
        used = self.key_mask[:, : self.length].any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.length
        if first == 0:
            return
        for buf in (self.cache.k, self.cache.v):
            for i, t in enumerate(buf):
                buf[i] = torch.cat([t[:, :, first:], t.new_zeros(t.shape[0], t.shape[1], first, t.shape[3])], dim=2)
        self.key_mask = torch.cat([self.key_mask[:, first:], self.key_mask.new_zeros(self.key_mask.shape[0], first)],
                                  dim=1)
        self.cache.length -= first

    def _grow(self) -> None:
        extra = HEADROOM
        for buf in (self.cache.k, self.cache.v):
            for i, t in enumerate(buf):
                buf[i] = torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], extra, t.shape[3])], dim=2)
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_zeros(self.key_mask.shape[0], extra)], dim=1)
        self.cache.max_len += extra
