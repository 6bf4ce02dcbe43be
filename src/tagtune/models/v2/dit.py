"""The flow-matching estimator of IndexTTS2's s2mel: a diffusion transformer with a WaveNet final stage.

Per frame, the noisy mel, the prompt mel (zero outside the prompt), the projected content condition and the
192-d style are concatenated and merged into ``hidden_dim``; a stack of pre-norm RoPE transformer blocks whose
RMSNorms are modulated by the time embedding (AdaLN: ``w * norm(x) + b``) follows, with U-ViT skips (block i
< depth//2 emits, block i > depth//2 receives the last emitted). A long skip concatenates the noisy mel again;
a WaveNet conditioned on a second time embedding and an AdaLN LayerNorm head give the velocity (B, 80, T).

Attribute names follow the official ``DiT`` (with gpt-fast's ``Transformer`` and the encodec-style weight-normed
``SConv1d``), so ``s2mel.pth``'s ``cfm`` part loads strictly. The official code never folds these weight norms;
folding them gives the same weights, computed once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.models.bigvgan import WNConv1d

if TYPE_CHECKING:
    from tagtune.config import DiTConfig, WaveNetConfig

MAX_POSITIONS = 16384  # the official ``input_pos`` buffer and RoPE table length
ROPE_BASE = 10000
RMS_EPS = 1e-5
FINAL_NORM_EPS = 1e-6
TIME_FREQ_DIM = 256  # sinusoidal time features
TIME_MAX_PERIOD = 10000
TIME_SCALE = 1000  # t in [0, 1] is scaled to [0, 1000] before the sinusoids


def ff_inner_dim(dim: int) -> int:
    """gpt-fast's SwiGLU width: 2/3 of 4*dim, rounded up to a multiple of 256."""
    n = int(2 * 4 * dim / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool, True on valid frames."""
    return torch.arange(max_length, device=lengths.device)[None] < lengths[:, None]


def rope_table(positions: int, head_dim: int, device=None) -> torch.Tensor:
    """(positions, head_dim/2, 2) cos/sin of the rotary angles, the rows of gpt-fast's ``freqs_cis``."""
    inv = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(positions, device=device), inv)  # (T, hd/2) float32
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of (B, T, H, hd) by the table (T, hd/2, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, hd/2, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1)
    return out.flatten(3).type_as(x)


class WNLinear(nn.Module):
    """Linear with legacy weight norm (``weight_g`` (out, 1), ``weight_v`` (out, in)) until folded."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(d_out, 1))
        self.weight_v = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        if not self.weight_v.is_meta:
            nn.init.normal_(self.weight_v, 0.0, 0.02)

    def effective_weight(self) -> torch.Tensor:
        if "weight" in self._parameters:
            return self.weight
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def remove_weight_norm(self) -> None:
        weight = self.effective_weight().detach()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps) * self.weight


class AdaptiveLayerNorm(nn.Module):
    """``w * RMSNorm(x) + b`` with (w, b) projected from the time embedding c (B, 1, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        weight, bias = self.project_layer(c).chunk(2, dim=-1)
        return weight * self.norm(x) + bias


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim) for t in self.wqkv(x).split(D, dim=-1))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int):
        super().__init__()
        inner = ff_inner_dim(dim)
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, uvit_skip: bool):
        super().__init__()
        self.attention = Attention(dim, n_head)
        self.feed_forward = FeedForward(dim)
        self.ffn_norm = AdaptiveLayerNorm(dim)
        self.attention_norm = AdaptiveLayerNorm(dim)
        self.skip_in_linear = nn.Linear(2 * dim, dim) if uvit_skip else None

    def forward(self, x, c, rope, mask, skip_in: torch.Tensor | None = None) -> torch.Tensor:
        if skip_in is not None:
            x = self.skip_in_linear(torch.cat([x, skip_in], dim=-1))
        h = x + self.attention(self.attention_norm(x, c), rope, mask)
        return h + self.feed_forward(self.ffn_norm(h, c))


class Transformer(nn.Module):
    """The block stack with U-ViT skips and a final AdaLN norm: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, n_head: int, depth: int, uvit_skip: bool):
        super().__init__()
        self.head_dim = dim // n_head
        self.layers = nn.ModuleList(TransformerBlock(dim, n_head, uvit_skip) for _ in range(depth))
        self.norm = AdaptiveLayerNorm(dim)
        middle = depth // 2
        self.emit = set(range(middle)) if uvit_skip else set()
        self.receive = set(range(middle + 1, depth)) if uvit_skip else set()

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rope = rope_table(x.shape[1], self.head_dim, x.device)
        skips = []
        for i, layer in enumerate(self.layers):
            x = layer(x, c, rope, mask, skips.pop() if i in self.receive else None)
            if i in self.emit:
                skips.append(x)
        return self.norm(x, c)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of 1000*t (cos half, then sin half) -> MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device="cpu") / half)
        self.register_buffer("freqs", torch.empty(half).copy_(freqs))  # computed on the CPU, also for meta builds

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        args = TIME_SCALE * t[:, None].float() * self.freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class SConv1d(nn.Module):
    """Weight-normed conv with 'same' reflect padding (encodec's ``SConv1d`` over ``NormConv1d``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Module()
        self.conv.conv = WNConv1d(c_in, c_out, kernel_size, dilation=dilation)
        self.pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.pad // 2
        left = self.pad - right
        if left or right:
            short = max(left, right) - x.shape[-1] + 1 if x.shape[-1] <= max(left, right) else 0
            x = F.pad(F.pad(x, (0, short)), (left, right), mode="reflect")  # encodec's pad1d for tiny inputs
            x = x[..., : x.shape[-1] - short]
        return self.conv.conv(x)


class WN(nn.Module):
    """WaveNet: gated dilated convs with a global condition, residual and skip outputs summed."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden, self.n_layers = hidden, n_layers
        self.cond_layer = SConv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList(SConv1d(hidden, 2 * hidden, kernel_size, dilation_rate**i)
                                       for i in range(n_layers))
        self.res_skip_layers = nn.ModuleList(SConv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1)
                                             for i in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """x (B, H, T), x_mask (B or 1, 1, T), g (B, gin, 1) -> (B, H, T)."""
        output = torch.zeros_like(x)
        g = self.cond_layer(g)
        H = self.hidden
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            z = in_layer(x) + g[:, 2 * H * i : 2 * H * (i + 1)]
            acts = torch.tanh(z[:, :H]) * torch.sigmoid(z[:, H:])
            out = res_skip(acts)
            if i < self.n_layers - 1:
                x = (x + out[:, :H]) * x_mask
                output = output + out[:, H:]
            else:
                output = output + out
        return output * x_mask


class FinalLayer(nn.Module):
    """LayerNorm (no affine) modulated by the time embedding, then a weight-normed Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=FINAL_NORM_EPS)
        self.linear = WNLinear(dim, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale[:, None]) + shift[:, None])


class DiT(nn.Module):
    """Velocity estimator: (x, prompt_x (B, 80, T), x_lens (B or 1,), t (B,), style (B, S), cond (B, T, C))
    -> (B, 80, T)."""

    def __init__(self, dit: DiTConfig, wavenet: WaveNetConfig, style_dim: int):
        super().__init__()
        D, W, mels = dit.hidden_dim, wavenet.hidden_dim, dit.in_channels
        self.transformer = Transformer(D, dit.num_heads, dit.depth, dit.uvit_skip_connection)
        self.x_embedder = WNLinear(mels, D)  # unused by the forward pass, kept for a strict load
        self.cond_embedder = nn.Embedding(dit.content_codebook_size, D)  # unused (discrete content)
        self.cond_projection = nn.Linear(dit.content_dim, D)
        self.t_embedder = TimestepEmbedder(D)
        self.register_buffer("input_pos", torch.empty(MAX_POSITIONS, dtype=torch.long).copy_(
            torch.arange(MAX_POSITIONS, device="cpu")))
        self.t_embedder2 = TimestepEmbedder(W)
        self.conv1 = nn.Linear(D, W)
        self.conv2 = nn.Conv1d(W, mels, 1)
        self.wavenet = WN(W, wavenet.kernel_size, wavenet.dilation_rate, wavenet.num_layers, gin_channels=W)
        self.final_layer = FinalLayer(W)
        self.res_projection = nn.Linear(D, W)
        self.content_mask_embedder = nn.Embedding(1, D)  # unused at inference
        self.long_skip_connection = dit.long_skip_connection
        self.skip_linear = nn.Linear(D + mels, D)
        self.cond_x_merge_linear = nn.Linear(D + 2 * mels + style_dim, D)

    def remove_weight_norm(self) -> None:
        """Fold every weight-normed Linear and conv into a plain weight (the same values, computed once)."""
        for module in self.modules():
            if isinstance(module, (WNLinear, WNConv1d)) and "weight" not in module._parameters:
                module.remove_weight_norm()

    def forward(self, x, prompt_x, x_lens, t, style, cond) -> torch.Tensor:
        B, _, T = x.shape
        t1 = self.t_embedder(t)  # (B, D)
        x = x.transpose(1, 2)  # (B, T, 80)
        merged = torch.cat([x, prompt_x.transpose(1, 2), self.cond_projection(cond),
                            style[:, None, :].expand(B, T, style.shape[-1])], dim=-1)
        x_in = self.cond_x_merge_linear(merged)  # (B, T, D)
        x_mask = length_mask(x_lens, T)[:, None]  # (b, 1, T)
        attn_mask = x_mask[:, None].expand(-1, -1, T, -1)  # (b, 1, T, T): a full (non-causal) length mask
        x_res = self.transformer(x_in, t1[:, None], attn_mask)
        if self.long_skip_connection:
            x_res = self.skip_linear(torch.cat([x_res, x], dim=-1))
        h = self.wavenet(self.conv1(x_res).transpose(1, 2), x_mask.to(x_res.dtype), self.t_embedder2(t)[:, :, None])
        h = h.transpose(1, 2) + self.res_projection(x_res)  # (B, T, W)
        return self.conv2(self.final_layer(h, t1).transpose(1, 2))  # (B, 80, T)
