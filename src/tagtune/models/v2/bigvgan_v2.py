"""BigVGAN v2 (``nvidia/bigvgan_v2_22khz_80band_256x``), the vocoder of IndexTTS2: 80-band mel -> 22.05 kHz.

The same generator as the 1.x vocoder (``tagtune.models.bigvgan``: weight-normed convs, transposed-conv
upsamplers each followed by the mean of three AMP blocks of anti-aliased log-scale SnakeBeta), without the
speaker conditioning, fed with a mel instead of GPT latents, and with the v2 head: ``conv_post`` without bias
and a clamp to [-1, 1] instead of tanh (``use_bias_at_final`` / ``use_tanh_at_final`` false).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from tagtune.config import ConfigError
from tagtune.models.bigvgan import Activation1d, WNConv1d, fold_weight_norm, run_upsampling, upsampling_stack

CONV_KERNEL = 7


@dataclass(frozen=True)
class BigVGANv2Config:
    """The generator keys of BigVGAN's ``config.json`` (defaults: bigvgan_v2_22khz_80band_256x)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock: str = "1"
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = False
    use_bias_at_final: bool = False
    sampling_rate: int = 22050
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # training keys, kept verbatim

    def __post_init__(self):
        if str(self.resblock) != "1" or self.activation != "snakebeta" or not self.snake_logscale:
            raise ConfigError("bigvgan config.json: only resblock '1' with log-scale snakebeta is supported "
                              f"(got resblock {self.resblock!r}, activation {self.activation!r}, "
                              f"snake_logscale {self.snake_logscale!r})")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("bigvgan config.json: upsample_rates and upsample_kernel_sizes differ in length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ConfigError(f"bigvgan config.json: upsample_initial_channel {self.upsample_initial_channel} "
                              f"cannot be halved {len(self.upsample_rates)} times")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BigVGANv2Config:
        """From a parsed ``config.json``; keys the generator does not use go to ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            if key in known:
                known[key] = tuple(known[key])
        if "resblock_dilation_sizes" in known:
            known["resblock_dilation_sizes"] = tuple(tuple(d) for d in known["resblock_dilation_sizes"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (256)."""
        return math.prod(self.upsample_rates)


class BigVGANv2(nn.Module):
    """Mel (B, num_mels, T) -> waveform (B, 1, T * hop_length) in [-1, 1]."""

    def __init__(self, cfg: BigVGANv2Config):
        super().__init__()
        self.cfg = cfg
        ch0 = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(cfg.num_mels, ch0, CONV_KERNEL, padding=CONV_KERNEL // 2)
        self.ups, self.resblocks = upsampling_stack(ch0, cfg.upsample_rates, cfg.upsample_kernel_sizes,
                                                    cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        ch = ch0 // 2 ** len(cfg.upsample_rates)
        self.activation_post = Activation1d(ch)
        self.conv_post = WNConv1d(ch, 1, CONV_KERNEL, padding=CONV_KERNEL // 2, bias=cfg.use_bias_at_final)

    def remove_weight_norm(self) -> None:
        """Fold ``weight_g``/``weight_v`` into plain weights, as the official code does after loading."""
        fold_weight_norm(self)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = run_upsampling(self.conv_pre(mel), self.ups, self.resblocks)
        x = self.conv_post(self.activation_post(x))  # (B, 1, T * hop)
        return torch.tanh(x) if self.cfg.use_tanh_at_final else torch.clamp(x, -1.0, 1.0)
