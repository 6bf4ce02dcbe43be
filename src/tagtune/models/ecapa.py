"""ECAPA-TDNN speaker encoder inside BigVGAN (``speaker_encoder.*``), SpeechBrain layout and key names.

Log-mel (B, T, n_mels) -> speaker embedding (B, 1, lin_neurons). Channel widths are fixed by the official
BigVGAN constructor (512/512/512/512/1536, attention 128, SE 128, Res2Net scale 8); only the input size and
the output size follow the config. Convs pad "same" by reflection; BatchNorms use running statistics in
eval mode. Wrapper modules (``conv.conv``, ``norm.norm``) exist only to reproduce the official key names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (512, 512, 512, 512, 1536)
KERNEL_SIZES = (5, 3, 3, 3, 1)
DILATIONS = (1, 2, 3, 4, 1)
ATTENTION_CHANNELS = 128
SE_CHANNELS = 128
RES2NET_SCALE = 8
BN_EPS = 1e-5
STD_EPS = 1e-12  # variance floor before the square root in statistics pooling


class Conv1d(nn.Module):
    """Stride-1 conv with reflect "same" padding of dilation*(kernel-1)/2 on each side (key ``conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class BatchNorm1d(nn.Module):
    """Key-name wrapper (``norm``) around ``nn.BatchNorm1d``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """conv -> ReLU -> BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = Conv1d(c_in, c_out, kernel_size, dilation)
        self.norm = BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Split channels into ``scale`` chunks; chunk i>0 passes a TDNN after adding the previous output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)
        ys = [chunks[0]]
        y = None
        for block, chunk in zip(self.blocks, chunks[1:]):
            y = block(chunk if y is None else chunk + y)
            ys.append(y)
        return torch.cat(ys, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: time mean -> conv -> ReLU -> conv -> sigmoid -> channel gains."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = Conv1d(channels, se_channels, 1)
        self.conv2 = Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)  # (B, C, 1)
        return x * torch.sigmoid(self.conv2(F.relu(self.conv1(s))))


class SERes2NetBlock(nn.Module):
    """tdnn1 (1x1) -> Res2Net -> tdnn2 (1x1) -> SE, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1)
        self.res2net_block = Res2NetBlock(channels, RES2NET_SCALE, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1)
        self.se_block = SEBlock(channels, SE_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of x (B, C, T) under weights w (B, C|1, T) that sum to 1: (B, C) each."""
    mean = (w * x).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=STD_EPS).sqrt()


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time with global context ([x, mean, std] as attention input) -> (B, 2C, 1)."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNNBlock(channels * 3, attention_channels, 1)
        self.conv = Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        uniform = torch.full((B, 1, T), 1.0 / T, dtype=x.dtype, device=x.device)
        mean, std = _weighted_stats(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand(B, C, T), std.unsqueeze(2).expand(B, C, T)], dim=1)
        attn = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)  # (B, C, T)
        mean, std = _weighted_stats(x, attn)
        return torch.cat([mean, std], dim=1).unsqueeze(2)  # (B, 2C, 1)


class ECAPA_TDNN(nn.Module):
    """Speaker encoder: mel (B, T, input_size) -> embedding (B, 1, lin_neurons)."""

    def __init__(self, input_size: int, lin_neurons: int):
        super().__init__()
        self.blocks = nn.ModuleList([TDNNBlock(input_size, CHANNELS[0], KERNEL_SIZES[0], DILATIONS[0])])
        for i in range(1, len(CHANNELS) - 1):
            self.blocks.append(SERes2NetBlock(CHANNELS[i], KERNEL_SIZES[i], DILATIONS[i]))
        self.mfa = TDNNBlock(CHANNELS[-2] * (len(CHANNELS) - 2), CHANNELS[-1], KERNEL_SIZES[-1], DILATIONS[-1])
        self.asp = AttentiveStatisticsPooling(CHANNELS[-1], ATTENTION_CHANNELS)
        self.asp_bn = BatchNorm1d(CHANNELS[-1] * 2)
        self.fc = Conv1d(CHANNELS[-1] * 2, lin_neurons, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(1, 2)  # (B, n_mels, T)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs[1:], dim=1))  # (B, 1536, T)
        x = self.fc(self.asp_bn(self.asp(x)))  # (B, lin_neurons, 1)
        return x.transpose(1, 2)
