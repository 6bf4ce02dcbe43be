"""Speaker conditioning of UnifiedVoice: reference log-mel -> Conformer -> Perceiver -> 32 latents.

Module and attribute names follow the official state-dict keys (``conditioning_encoder.embed.*``,
``encoders.{i}.*``, ``after_norm.*``; ``perceiver_encoder.latents``, ``layers.{i}.0.to_q`` ...), so
official weights load strictly by name. The Conformer is the legacy wenet flavour IndexTTS ships: its
relative-position attention never applies ``rel_shift``, so the position term depends on the absolute key
index, and the encoder only accepts right-padded batches (lengths) for that reason.

Official padding is not exact: the ConvModule zeroes padded frames *before* its first pointwise conv, whose
bias then leaks into the depthwise conv at the last valid frames, so a right-padded row differs slightly
from its unpadded run (tiny fixture: 2e-2 in the Conformer output, 3e-4 in the latents).
``mask_padding=True`` also zeroes them after the GLU, which makes every row equal to its unpadded run;
the default reproduces the official numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.audio import HOP, SAMPLE_RATE
from tagtune.config import ConditionConfig

MEL_BANDS = 100  # input features of the conditioning encoder
POS_TABLE_ROWS = 5000  # rows of the fixed sinusoid table (a buffer in the official checkpoint)
SUBSAMPLE_KERNEL = 3
SUBSAMPLE_STRIDE = 2
CONV_KERNEL = 15  # depthwise conv of the Conformer ConvModule
LN_EPS = 1e-5
PERCEIVER_DEPTH = 2
PERCEIVER_DIM_HEAD = 64
REFERENCE_FRAME_SECONDS = SUBSAMPLE_STRIDE * HOP / SAMPLE_RATE  # one subsampled frame: 2 mel hops at 24 kHz


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """Standard transformer sinusoid table (rows, dim): sin on even columns, cos on odd ones."""
    pos = torch.arange(rows, dtype=torch.float32)[:, None]  # (rows, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(rows, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class RelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(D) and returns the first T rows of the fixed sinusoid table."""

    def __init__(self, dim: int, rows: int = POS_TABLE_ROWS):
        super().__init__()
        self.scale = math.sqrt(dim)
        # persistent: the official checkpoint stores it (conditioning_encoder.embed.pos_enc.pe)
        self.register_buffer("pe", sinusoid_table(rows, dim)[None])  # (1, rows, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, rows = x.shape[1], self.pe.shape[1]
        if T >= rows:
            raise ValueError(
                f"reference too long for the conditioning encoder: {T} subsampled frames, the position table "
                f"has {rows} rows (keep the reference under {rows * REFERENCE_FRAME_SECONDS:.0f} s)"
            )
        return x * self.scale, self.pe[:, :T]


class Conv2dSubsampling2(nn.Module):
    """Conv2d(1->D, k3, s2) + ReLU over (time, mel), channel-major flatten, Linear -> (B, T', D)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        freq = (in_dim - SUBSAMPLE_KERNEL) // SUBSAMPLE_STRIDE + 1
        self.conv = nn.Sequential(nn.Conv2d(1, dim, SUBSAMPLE_KERNEL, SUBSAMPLE_STRIDE), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(dim * freq, dim))
        self.pos_enc = RelPositionalEncoding(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x (B, T, F), mask (B, T) -> x (B, T', D), pos (1, T', D), mask (B, T')."""
        frames, mask = self.frames(x, mask)
        x, pos = self.pos_enc(frames)
        return x, pos, mask

    def frames(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F), mask (B, T) -> subsampled frames (B, T', D) before the position scaling, mask (B, T').

        A real output frame t' reads input frames 2t' .. 2t'+2, all real: each row's real frames equal its
        unpadded run, so they can be computed once per clip and padded later (``encode``)."""
        x = self.conv(x[:, None])  # (B, D, T', F')
        B, C, T, Fr = x.shape
        return self.out(x.transpose(1, 2).reshape(B, T, C * Fr)), mask[:, 2::2]  # feature index = c * F' + f


class RelPositionAttention(nn.Module):
    """wenet's relative-position MHSA as IndexTTS runs it: no rel_shift, key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1, self.heads, self.d_k)  # (B, T, H, d_k)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pos (1, T, D), mask (B, T) -> (B, T, D)."""
        B, T, D = x.shape
        q = self._split(self.linear_q(x))
        k = self._split(self.linear_k(x)).transpose(1, 2)  # (B, H, T, d_k)
        v = self._split(self.linear_v(x)).transpose(1, 2)
        p = self._split(self.linear_pos(pos)).transpose(1, 2)  # (1, H, T, d_k)
        ac = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)  # (B, H, T, T)
        bd = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)  # absolute key index: no shift
        scores = (ac + bd) / math.sqrt(self.d_k)
        pad = ~mask[:, None, None, :]  # (B, 1, 1, T)
        attn = scores.masked_fill(pad, float("-inf")).softmax(dim=-1).masked_fill(pad, 0.0)
        y = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.linear_out(y)


class ConvModule(nn.Module):
    """Pointwise conv -> GLU -> depthwise conv -> LayerNorm -> SiLU -> pointwise conv; padding zeroed."""

    def __init__(self, dim: int):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, CONV_KERNEL, padding=CONV_KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mask_padding: bool = False) -> torch.Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D)."""
        keep = mask[:, None, :]  # (B, 1, T)
        x = x.transpose(1, 2).masked_fill(~keep, 0.0)  # (B, D, T)
        x = F.glu(self.pointwise_conv1(x), dim=1)
        if mask_padding:  # the official model lets GLU(bias) of padded frames reach the depthwise conv
            x = x.masked_fill(~keep, 0.0)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(~keep, 0.0)
        return x.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm Conformer block without macaron FF: MHSA, ConvModule, FF, then ``norm_final``."""

    def __init__(self, dim: int, ffn_dim: int, heads: int):
        super().__init__()
        self.self_attn = RelPositionAttention(dim, heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.conv_module = ConvModule(dim)
        self.norm_ff = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_mha = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_conv = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_final = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x, pos, mask, mask_padding: bool = False) -> torch.Tensor:
        """x (B, T, D), pos (1, T, D), mask (B, T) -> (B, T, D)."""
        x = x + self.self_attn(self.norm_mha(x), pos, mask)
        x = x + self.conv_module(self.norm_conv(x), mask, mask_padding)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """(B, T, 100) log-mel + lengths -> (B, T', D) with T' = (T - 1) // 2, and its (B, T') frame mask."""

    def __init__(self, cfg: ConditionConfig, in_dim: int = MEL_BANDS):
        super().__init__()
        dim = cfg.output_size
        self.embed = Conv2dSubsampling2(in_dim, dim)
        self.encoders = nn.ModuleList(
            ConformerLayer(dim, cfg.linear_units, cfg.attention_heads) for _ in range(cfg.num_blocks)
        )
        self.after_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask_padding: bool = False):
        """x (B, T, 100), lengths (B,) -> (B, T', D), mask (B, T'). ``mask_padding``: see the module doc."""
        return self.encode(*self.embed.frames(x, length_mask(lengths, x.shape[1])), mask_padding)

    def encode(self, frames: torch.Tensor, mask: torch.Tensor, mask_padding: bool = False):
        """The layers above the input subsampling: frames (B, T', D) from ``embed.frames``, mask (B, T') ->
        (B, T', D), mask (B, T')."""
        x, pos = self.embed.pos_enc(frames)
        for layer in self.encoders:
            x = layer(x, pos, mask, mask_padding)
        return self.after_norm(x), mask


class PerceiverAttention(nn.Module):
    """Latents attend over [latents || context]; no norm before it (as in the official model)."""

    def __init__(self, dim: int, heads: int, dim_head: int = PERCEIVER_DIM_HEAD):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)  # rows [0, inner) = K, [inner, 2 inner) = V
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latents (B, N, D), context (B, T, D), mask (B, N + T) -> (B, N, D)."""
        B, N, _ = latents.shape
        kv = torch.cat([latents, context], dim=1)  # (B, N + T, D)
        k, v = self.to_kv(kv).chunk(2, dim=-1)
        q, k, v = (t.view(B, t.shape[1], self.heads, -1).transpose(1, 2) for t in (self.to_q(latents), k, v))
        sim = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N + T)
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        y = sim.softmax(dim=-1) @ v  # (B, H, N, dim_head)
        return self.to_out(y.transpose(1, 2).reshape(B, N, -1))


class GEGLU(nn.Module):
    """First half times exact GELU of the second half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(D) * gamma."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


def perceiver_ff(dim: int, mult: float) -> nn.Sequential:
    """Linear(D -> 2I) -> GEGLU -> Linear(I -> D), I = int(D * mult * 2 / 3) (keys ``.0`` and ``.2``)."""
    inner = int(dim * mult * 2 / 3)
    return nn.Sequential(nn.Linear(dim, 2 * inner), GEGLU(), nn.Linear(inner, dim))


class PerceiverResampler(nn.Module):
    """Resamples a (B, T, C) context to ``num_latents`` learned queries of width D."""

    def __init__(self, dim: int, dim_context: int, heads: int, ff_mult: float, num_latents: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.proj_context = nn.Linear(dim_context, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), perceiver_ff(dim, ff_mult)])
            for _ in range(PERCEIVER_DEPTH)
        )
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """context (B, T, C), context_mask (B, T) bool -> (B, num_latents, D)."""
        B = context.shape[0]
        ctx = self.proj_context(context)  # (B, T, D)
        latents = self.latents.expand(B, -1, -1)  # (B, N, D)
        keep_latents = torch.ones(B, latents.shape[1], dtype=torch.bool, device=context_mask.device)
        mask = torch.cat([keep_latents, context_mask], dim=1)  # (B, N + T): the latents are always real
        for attn, ff in self.layers:
            latents = attn(latents, ctx, mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
