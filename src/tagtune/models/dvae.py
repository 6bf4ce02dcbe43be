"""The discrete VAE that turns 100-band log-mels into the GPT's mel codes (official ``DiscreteVAE``).

Encoder: two stride-2 convs (ReLU), residual blocks, a 1x1 conv to the codebook dimension; each output
frame takes the index of the nearest codebook column (squared L2). One code covers 4 mel frames = 1024
samples. The decoder (codes -> mel) is kept for reconstruction checks; inference never uses it.

Batched encoding: pass ``mel_lengths`` and every layer's output is zeroed past each row's length. A conv
then sees exactly the zeros its own padding would supply for the unpadded row, so a padded batch gives the
same codes as encoding each row alone (up to float rounding); positions past a row's end hold ``PAD_CODE``.
Without ``mel_lengths`` the padding is treated as audio: a short row's last codes, those whose receptive
field (about 7 codes for the full-size model: two k3 convs per residual block at the code rate) reaches
into the padding, can change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import DVAEConfig

STRIDE = 2
LOSS_AVERAGING_STEPS = 100  # rows of the training-only ``discrete_loss.accumulator`` buffer
NEAREST_CHUNK = 4096  # code vectors per distance matrix (4096 x 8192 fp32 = 128 MiB)
PAD_CODE = -1  # code written past a row's length in batched encoding (fails loudly if used as an index)


def _time_mask(lengths: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """(B, 1, size) bool mask of valid frames, or None."""
    if lengths is None:
        return None
    return (torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1)


def _halve(lengths: torch.Tensor) -> torch.Tensor:
    """Output length of a stride-2 conv with kernel 3, padding 1: ceil(L / 2)."""
    return torch.div(lengths + STRIDE - 1, STRIDE, rounding_mode="floor")


def _apply(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.masked_fill(~mask, 0.0)


class ResBlock(nn.Module):
    """conv3 -> ReLU -> conv3 -> ReLU -> conv1, plus the input (keys ``net.{0,2,4}``)."""

    def __init__(self, chan: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(chan, chan, 3, padding=1), nn.ReLU(),
            nn.Conv1d(chan, chan, 3, padding=1), nn.ReLU(),
            nn.Conv1d(chan, chan, 1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = _apply(F.relu(self.net[0](x)), mask)
        h = _apply(F.relu(self.net[2](h)), mask)
        return _apply(self.net[4](h) + x, mask)


class UpsampledConv(nn.Module):
    """Nearest-neighbour x2 upsampling then a conv (the decoder's replacement for transposed convs)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=STRIDE, mode="nearest"))


class Quantize(nn.Module):
    """Codebook: column j of ``embed`` (dim, n_embed) is code j. EMA statistics are training-only."""

    def __init__(self, dim: int, n_embed: int):
        super().__init__()
        embed = torch.randn(dim, n_embed)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", embed.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest column for each vector: (..., dim) -> (...) int64."""
        flat = x.reshape(-1, x.shape[-1])  # (N, dim)
        e2 = self.embed.pow(2).sum(0, keepdim=True)  # (1, n_embed)
        out = []
        for rows in flat.split(NEAREST_CHUNK):  # bounds the (rows, n_embed) distance matrix
            # the official expansion |x|^2 - 2 x.e + |e|^2, term for term, so near-ties resolve the same way
            dist = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ self.embed + e2
            out.append(dist.argmin(dim=1))
        return torch.cat(out).reshape(x.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors: (...) -> (..., dim)."""
        return F.embedding(codes, self.embed.t())


class DiscretizationStats(nn.Module):
    """Buffers of the official training-only discretisation loss; kept so checkpoints load strictly."""

    def __init__(self, n_tokens: int, steps: int = LOSS_AVERAGING_STEPS):
        super().__init__()
        self.register_buffer("accumulator_index", torch.zeros(1, dtype=torch.long))
        self.register_buffer("accumulator_filled", torch.zeros(1, dtype=torch.long))
        self.register_buffer("accumulator", torch.zeros(steps, n_tokens))


class DiscreteVAE(nn.Module):
    """The official ``DiscreteVAE`` (1-D, no transposed convs), built from the ``vqvae`` config section."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        self.cfg = cfg
        k, pad = cfg.kernel_size, (cfg.kernel_size - 1) // 2
        enc_chans = [cfg.hidden_dim * 2**i for i in range(cfg.num_layers)]  # e.g. [512, 1024]
        inner = enc_chans[-1]
        has_res = cfg.num_resnet_blocks > 0
        dec_chans = [inner if has_res else cfg.codebook_dim, *reversed(enc_chans)]  # e.g. [1024, 1024, 512]
        self.discrete_loss = DiscretizationStats(cfg.num_tokens)

        enc: list[nn.Module] = []
        for c_in, c_out in zip([cfg.channels, *enc_chans[:-1]], enc_chans):
            enc.append(nn.Sequential(nn.Conv1d(c_in, c_out, k, stride=STRIDE, padding=pad), nn.ReLU()))
        enc += [ResBlock(inner) for _ in range(cfg.num_resnet_blocks)]
        enc.append(nn.Conv1d(inner, cfg.codebook_dim, 1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv1d(cfg.codebook_dim, inner, 1)] if has_res else []
        dec += [ResBlock(inner) for _ in range(cfg.num_resnet_blocks)]
        for c_in, c_out in zip(dec_chans[:-1], dec_chans[1:]):
            dec.append(nn.Sequential(UpsampledConv(c_in, c_out, k), nn.ReLU()))
        dec.append(nn.Conv1d(dec_chans[-1], cfg.channels, 1))
        self.decoder = nn.Sequential(*dec)

        self.codebook = Quantize(cfg.codebook_dim, cfg.num_tokens)

    def code_lengths(self, mel_lengths: torch.Tensor) -> torch.Tensor:
        """Codes per row for ``mel_lengths`` frames: ceil applied once per stride-2 layer."""
        out = mel_lengths
        for _ in range(self.cfg.num_layers):
            out = _halve(out)
        return out

    def encode(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous encoder output: mel (B, channels, T) -> (B, codebook_dim, T_c)."""
        lengths = mel_lengths
        x = _apply(mel, _time_mask(lengths, mel.shape[-1]))
        for layer in self.encoder:
            if isinstance(layer, nn.Sequential):  # stride-2 conv + ReLU
                x = layer(x)
                lengths = None if lengths is None else _halve(lengths)
                x = _apply(x, _time_mask(lengths, x.shape[-1]))
            elif isinstance(layer, ResBlock):
                x = layer(x, _time_mask(lengths, x.shape[-1]))
            else:
                x = layer(x)
        return x

    @torch.no_grad()
    def get_codebook_indices(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mel codes: mel (B, channels, T) -> (B, T_c) int64, T_c = ceil(ceil(T/2)/2).

        With ``mel_lengths`` (B,) the rows may be right-padded; codes past a row's end are ``PAD_CODE``.
        """
        z = self.encode(mel, mel_lengths).transpose(1, 2)  # (B, T_c, D)
        codes = self.codebook.nearest(z)
        if mel_lengths is not None:
            valid = _time_mask(self.code_lengths(mel_lengths), codes.shape[1]).squeeze(1)
            codes = codes.masked_fill(~valid, PAD_CODE)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructed mel: codes (B, T_c) -> (B, channels, T_c * 2**num_layers)."""
        return self.decoder(self.codebook.lookup(codes).transpose(1, 2))
