"""The MaskGCT semantic codec (RepCodec) of IndexTTS2: w2v-BERT features <-> semantic codes.

encoder: Vocos ConvNeXt backbone + Linear, (B, T, 1024) -> (B, T, 1024); quantizer: one factorised VQ that
projects to ``codebook_dim`` with a weight-normed 1x1 conv, picks the nearest L2-normalised codebook row and
projects back. IndexTTS2 uses ``quantize`` on the speaker features (codes and the quantised embedding of the
prompt) and ``vq2emb`` on generated codes. The decoder is never run at inference; it is built so that the
official file (59 tensors at the fixture's size, 239 at full size) loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import SemanticCodecConfig
from tagtune.models.bigvgan import WNConv1d

CONVNEXT_KERNEL = 7
LAYER_NORM_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> Linear -> GELU -> Linear, scaled by ``gamma``, added to the input."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, CONVNEXT_KERNEL, padding=CONVNEXT_KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(self.dwconv(x).transpose(1, 2))  # (B, T, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    """Conv embed -> LayerNorm -> ConvNeXt blocks -> LayerNorm: (B, C_in, T) -> (B, T, dim)."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, CONVNEXT_KERNEL, padding=CONVNEXT_KERNEL // 2)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (B, dim, T)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class FactorizedVectorQuantize(nn.Module):
    """Project (B, D, T) to the codebook dimension, take the nearest codebook row by cosine, project back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_project = WNConv1d(input_dim, codebook_dim, 1)
        self.out_project = WNConv1d(codebook_dim, input_dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Codes (B, T) of projected latents (B, d, T): the official squared distance of unit vectors."""
        B = z_e.shape[0]
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))  # (B*T, d)
        book = F.normalize(self.codebook.weight)  # (K, d)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1)[1].view(B, -1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, T), quantised (B, D, T)); the latter in the official straight-through form."""
        z_e = self.in_project(z)
        codes = self.nearest(z_e)
        z_q = self.codebook(codes).transpose(1, 2)  # (B, d, T)
        return codes, self.out_project(z_e + (z_q - z_e))

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, D, T) embeddings."""
        return self.out_project(self.codebook(codes).transpose(1, 2))


class ResidualVQ(nn.Module):
    """The official residual wrapper, here with its one quantizer (``quantizers.0``)."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, num_quantizers: int = 1):
        super().__init__()
        self.quantizers = nn.ModuleList(
            FactorizedVectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(num_quantizers)
        )


class RepCodec(nn.Module):
    """Semantic codec: ``quantize`` features to codes, ``vq2emb`` codes back to 1024-d embeddings."""

    def __init__(self, cfg: SemanticCodecConfig):
        super().__init__()
        self.cfg = cfg

        def backbone_and_head():
            return nn.Sequential(
                VocosBackbone(cfg.hidden_size, cfg.vocos_dim, cfg.vocos_intermediate_dim, cfg.vocos_num_layers),
                nn.Linear(cfg.vocos_dim, cfg.hidden_size),
            )

        self.encoder = backbone_and_head()
        self.decoder = backbone_and_head()  # training only; kept for a strict load
        self.quantizer = ResidualVQ(cfg.hidden_size, cfg.codebook_size, cfg.codebook_dim)

    def remove_weight_norm(self) -> None:
        """Fold the projections' ``weight_g``/``weight_v`` (the same weights the official code recomputes)."""
        for module in self.modules():
            if isinstance(module, WNConv1d) and "weight" not in module._parameters:
                module.remove_weight_norm()

    def quantize(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, hidden) features -> (codes (B, T), quantised embedding (B, T, hidden))."""
        z = self.encoder(feats.transpose(1, 2)).transpose(1, 2)  # (B, hidden, T)
        codes, quantized = self.quantizer.quantizers[0](z)
        return codes, quantized.transpose(1, 2)

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, T, hidden).

        Row b uses the codebook with row b's codes. The official call ``vq2emb(codes.unsqueeze(1))`` indexes
        quantizers by the batch axis, which is the same thing for the batch of one it is used with.
        """
        return self.quantizer.quantizers[0].vq2emb(codes).transpose(1, 2)
