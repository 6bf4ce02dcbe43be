"""CAMPPlus (3D-Speaker's CAM++) speaker model: the 192-d style vector that conditions IndexTTS2's s2mel.

Input: mean-normalised 80-bin Kaldi fbank (``tagtune.audio_v2.campplus_features``), (B, T, 80).
FCM head (2-D residual convs over frequency x time, 32 channels) -> TDNN (stride 2) -> three densely connected
blocks of context-aware-masking TDNN layers (12, 24, 16 layers), each followed by a halving transit layer ->
mean+std pooling -> 1x1 dense layer with a non-affine BatchNorm. Attribute names are the official ones, so
``campplus_cn_common.bin`` (937 tensors) loads strictly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import CAMPPlusWidths

FCM_CHANNELS = 32  # hard-coded in the official FCM head
FCM_BLOCKS = (2, 2)
BLOCK_LAYERS = (12, 24, 16)  # dense TDNN block depths
BLOCK_DILATIONS = (1, 2, 2)
BLOCK_KERNEL = 3
CAM_SEGMENT = 100  # frames per segment of the context pooling
CAM_REDUCTION = 2
FEAT_DIM = 80  # IndexTTS2 builds CAMPPlus(feat_dim=80, embedding_size=192)
EMBEDDING_SIZE = 192


def batchnorm_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class BasicResBlock(nn.Module):
    """2-D residual block; ``stride`` applies to the frequency axis only."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """Frequency-wise front end: (B, F, T) -> (B, 32 * F/8, T)."""

    def __init__(self, feat_dim: int):
        super().__init__()
        c = FCM_CHANNELS
        self.conv1 = nn.Conv2d(1, c, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(*(BasicResBlock(c, c, 2 if i == 0 else 1) for i in range(FCM_BLOCKS[0])))
        self.layer2 = nn.Sequential(*(BasicResBlock(c, c, 2 if i == 0 else 1) for i in range(FCM_BLOCKS[1])))
        self.conv2 = nn.Conv2d(c, c, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.out_channels = c * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x[:, None])))  # (B, C, F, T)
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))  # (B, C, F/8, T)
        return out.flatten(1, 2)


class TDNNLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)
        self.nonlinear = batchnorm_relu(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Local conv gated by a context mask from the global mean plus 100-frame segment means."""

    def __init__(self, bn_channels: int, c_out: int, kernel_size: int, dilation: int):
        super().__init__()
        pad = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, c_out, kernel_size, padding=pad, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // CAM_REDUCTION, 1)
        self.relu = nn.ReLU()
        self.linear2 = nn.Conv1d(bn_channels // CAM_REDUCTION, c_out, 1)

    @staticmethod
    def segment_means(x: torch.Tensor) -> torch.Tensor:
        """Each frame replaced by the mean of its 100-frame segment (the last one partial)."""
        seg = F.avg_pool1d(x, CAM_SEGMENT, CAM_SEGMENT, ceil_mode=True)  # (B, C, S)
        return seg.repeat_interleave(CAM_SEGMENT, dim=-1)[..., : x.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + self.segment_means(x)
        mask = torch.sigmoid(self.linear2(self.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = batchnorm_relu(c_in)
        self.linear1 = nn.Conv1d(c_in, bn_channels, 1, bias=False)
        self.nonlinear2 = batchnorm_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, c_out, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    """Densely connected: each layer's output is appended to the channels the next one reads."""

    def __init__(self, num_layers: int, c_in: int, growth: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        for i in range(num_layers):
            layer = CAMDenseTDNNLayer(c_in + i * growth, growth, bn_channels, kernel_size, dilation)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.nonlinear = batchnorm_relu(c_in)
        self.linear = nn.Conv1d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    """Mean and unbiased standard deviation over time: (B, C, T) -> (B, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class DenseLayer(nn.Module):
    """1x1 conv on a pooled vector, then a BatchNorm without affine parameters."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(c_out, affine=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C)
        return self.nonlinear(self.linear(x[..., None])[..., 0])


class CAMPPlus(nn.Module):
    """Speaker/style embedding: fbank (B, T, feat_dim) -> (B, embedding_size)."""

    def __init__(self, widths: CAMPPlusWidths | None = None, feat_dim: int = FEAT_DIM,
                 embedding_size: int = EMBEDDING_SIZE):
        super().__init__()
        w = widths or CAMPPlusWidths()
        self.head = FCM(feat_dim)
        channels = w.init_channels
        layers = [("tdnn", TDNNLayer(self.head.out_channels, channels, 5, stride=2))]
        for i, (depth, dilation) in enumerate(zip(BLOCK_LAYERS, BLOCK_DILATIONS)):
            layers.append((f"block{i + 1}", CAMDenseTDNNBlock(depth, channels, w.growth_rate,
                                                            w.bn_size * w.growth_rate, BLOCK_KERNEL, dilation)))
            channels += depth * w.growth_rate
            layers.append((f"transit{i + 1}", TransitLayer(channels, channels // 2)))
            channels //= 2
        layers += [("out_nonlinear", batchnorm_relu(channels)), ("stats", StatsPool()),
                   ("dense", DenseLayer(channels * 2, embedding_size))]
        self.xvector = nn.Sequential(OrderedDict(layers))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(feats.transpose(1, 2)))
