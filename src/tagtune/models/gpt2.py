"""The GPT-2 backbone of UnifiedVoice, with the official state-dict keys (``h.{i}.*``, ``ln_f.*``).

Own blocks rather than ``transformers.GPT2Model``: IndexTTS deletes GPT-2's token and position tables, and
we want a preallocated KV cache, SDPA attention and a stable API across transformers releases. The linear
layers are ``transformers.pytorch_utils.Conv1D`` (weight stored (in, out), ``y = x @ W + b``), exactly the
official layout, which peft's LoRA wraps natively (``fan_in_fan_out=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

LN_EPS = 1e-5


class KVCache:
    """Preallocated keys/values for every layer: ``k[i]``, ``v[i]`` of shape (B, H, max_len, head_dim).

    ``length`` is the number of filled positions; a forward with a cache writes its new keys at
    ``[length, length + T)`` and advances ``length``.
    """

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int, *, dtype, device):
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0
        self.max_len = max_len

    def every_row(self, step: int) -> KVCache:
        """A cache over rows 0, step, 2·step, … of this one, sharing its storage (writes land here)."""
        view = object.__new__(KVCache)
        view.k, view.v = [t[::step] for t in self.k], [t[::step] for t in self.v]
        view.length, view.max_len = self.length, self.max_len
        return view

    def spread_rows(self, step: int) -> None:
        """Copy rows 0, step, 2·step, … over the ``step - 1`` rows after each, for the filled positions."""
        n = self.length
        for t in (*self.k, *self.v):
            groups = t.unflatten(0, (-1, step))  # (B / step, step, H, max_len, head_dim), a view
            groups[:, 1:, :, :n] = groups[:, :1, :, :n]

    def reorder(self, index: torch.Tensor, start: int = 0) -> None:
        """Select batch rows (beam search): row b becomes old row ``index[b]``, from position ``start`` on."""
        self.move_rows(torch.arange(len(index), device=index.device), index, start)

    def move_rows(self, dest: torch.Tensor, source: torch.Tensor, start: int = 0) -> None:
        """Row ``dest[i]`` becomes old row ``source[i]``, over the filled positions from ``start`` on.

        Each row that changes is copied once, in place, in an order that reads a row before overwriting it
        (``copy_plan``). A gather-then-scatter moves every byte twice, and at each beam-search step that is
        the whole filled cache of every layer: a fifth of the decode time of 3 beams at full size on a CPU.
        ``start`` skips positions that already hold the same keys in both rows (the beams of one prompt)."""
        kept, plan = copy_plan(dest.tolist(), source.tolist())
        n = self.length
        for buf in (self.k, self.v):
            for t in buf:
                copies = {r: t[r, :, start:n].clone() for r in kept}
                for d, s in plan:
                    t[d, :, start:n] = t[s, :, start:n] if s >= 0 else copies[-1 - s]


def copy_plan(dest: list[int], source: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(rows to copy aside first, [(d, s)]: row d takes row s) so that no row is overwritten before it is read.

    Rows that keep their place are left out. Where only cycles remain (a swap), one row of each is copied
    aside up front and its readers take the copy: ``s = -1 - r`` stands for the copy of row r."""
    pending = {d: s for d, s in zip(dest, source) if d != s}
    kept, plan = [], []
    while pending:
        read = set(pending.values())
        free = [d for d in pending if d not in read]
        if not free:
            r = next(iter(pending))  # still holds its old value: a row is written once, when it leaves pending
            kept.append(r)
            pending = {d: (-1 - r if s == r else s) for d, s in pending.items()}
            continue
        plan += [(d, pending.pop(d)) for d in free]
    return kept, plan


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(3 * dim, dim)
        self.c_proj = Conv1D(dim, dim)
        self.attn_dropout = 0.0  # set by the owner for training (GPT-2 default 0.1)
        self.resid_dropout = nn.Dropout(0.0)

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k = cache.k[layer][:, :, : start + T]
            v = cache.v[layer][:, :, : start + T]
        drop = self.attn_dropout if self.training else 0.0
        if T == 1 and not drop:
            y = _one_query_attention(q, k, v, mask)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.resid_dropout(self.c_proj(y))


def _one_query_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v for one new query per row (a decode step): (B, H, 1, d) over (B, H, S, d).

    Two matrix products read the cache once; SDPA's CPU flash kernel is built for blocks of queries. A full-size
    3-beam int8 decode on a 2-core CPU is 2-7 % faster this way (``bench/bench_decode.py``)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, 1, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # every query sees itself: no row is all -inf
    return torch.matmul(scores.softmax(-1), v)


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = Conv1D(4 * dim, dim)
        self.c_proj = Conv1D(dim, 4 * dim)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        # gelu_new == gelu_pytorch_tanh: the tanh approximation
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim)

    def forward(self, x, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT2Backbone(nn.Module):
    """Pre-LN transformer over input embeddings: no token table, no position table (IndexTTS adds its own).

    ``forward(x, key_mask=None, cache=None)``:
      x        (B, T, D) input embeddings (positions already added by the caller)
      key_mask (B, S) bool, True for real positions, over the whole key length S (cache included);
               None means every position is real.
      cache    a KVCache; the T new positions are appended after ``cache.length``.
    Returns the hidden states after ``ln_f``, (B, T, D).
    """

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.h = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(0.0)  # GPT-2's embd_pdrop on the input embeddings
        self.dim, self.heads = dim, heads
        self.gradient_checkpointing = False

    def set_dropout(self, p: float) -> None:
        """GPT-2's embd/attn/resid dropout (0.1 in the official config; active in train mode only)."""
        self.drop.p = p
        for blk in self.h:
            blk.attn.attn_dropout = p
            blk.attn.resid_dropout.p = p
            blk.mlp.dropout.p = p

    def new_cache(self, batch: int, max_len: int, *, dtype=None, device=None) -> KVCache:
        p = self.ln_f.weight
        return KVCache(len(self.h), batch, self.heads, max_len, self.dim // self.heads,
                       dtype=dtype or p.dtype, device=device or p.device)

    def forward(self, x, key_mask: torch.Tensor | None = None, cache: KVCache | None = None):
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        mask = None
        if key_mask is not None or (past and T > 1):
            mask = attention_mask(T, past, key_mask, x.device, B)
        x = self.drop(x)
        for i, blk in enumerate(self.h):
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, cache, i, use_reentrant=False)
            else:
                x = blk(x, mask, cache, i)
        if cache is not None:
            cache.length = past + T
        return self.ln_f(x)


def attention_mask(T: int, past: int, key_mask, device, batch: int) -> torch.Tensor:
    """Boolean (B, 1, T, past+T) mask: causal over the new queries, key padding from ``key_mask``.

    Every query may always see itself, so a padding query never has an all-masked row (SDPA would give NaN
    there, and NaN times a zero attention weight still poisons the real rows).
    """
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    if key_mask is None:
        return causal[None, None].expand(batch, 1, T, S)
    m = causal[None] & key_mask[:, None, :S].bool()  # (B, T, S)
    m = m | (k_pos == q_pos)[None]
    return m[:, None]
