"""BigVGAN generator of IndexTTS 1.x: GPT latents + reference log-mel -> 24 kHz waveform.

conv_pre (+ speaker conditioning) -> 6 transposed-conv upsamplers (x1024 in all), each followed by speaker
conditioning and the mean of 3 AMPBlock1 residual stacks -> anti-aliased SnakeBeta -> conv_post -> tanh.
The speaker embedding comes from the ECAPA-TDNN of the reference mel; it can be computed once per reference
(:meth:`BigVGAN.speaker_embedding`) and passed back in.

Weight norm is PyTorch's legacy form: the checkpoint stores ``weight_g`` / ``weight_v`` and the weight is
``v * (g / ||v||)`` with the norm over every dim but 0 (for a transposed conv dim 0 is the input channels).
Load the checkpoint first, then call :meth:`BigVGAN.remove_weight_norm`, as the official code does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import BigVGANConfig
from tagtune.models.ecapa import ECAPA_TDNN

INIT_STD = 0.01
SNAKE_EPS = 1e-9  # official "no_div_by_zero"
# Anti-aliasing: x2 upsample, activation, x2 downsample with a 12-tap Kaiser-windowed sinc
AA_RATIO = 2
AA_TAPS = 12
AA_CUTOFF = 0.5 / AA_RATIO
AA_HALF_WIDTH = 0.6 / AA_RATIO
UP_PAD = AA_TAPS // AA_RATIO - 1  # 5 replicated samples each side before upsampling
UP_CROP = UP_PAD * AA_RATIO + (AA_TAPS - AA_RATIO) // 2  # 15 samples cropped each side after it
DOWN_PAD = (AA_TAPS // 2 - 1, AA_TAPS // 2)  # (5, 6) replicated samples before the strided low-pass


@lru_cache(maxsize=4)
def kaiser_sinc_filter(cutoff: float = AA_CUTOFF, half_width: float = AA_HALF_WIDTH,
                       taps: int = AA_TAPS) -> torch.Tensor:
    """Even-length Kaiser-windowed sinc low-pass, unit DC gain: (1, 1, taps), on the CPU (do not modify)."""
    half = taps // 2
    atten = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95  # Kaiser's attenuation estimate
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False, device="cpu")
    time = torch.arange(-half, half, device="cpu") + 0.5
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (filt / filt.sum()).view(1, 1, taps)


def _filter_buffer() -> torch.Tensor:
    """A fresh (1, 1, taps) filter on the current default device (meta included)."""
    return torch.empty(1, 1, AA_TAPS).copy_(kaiser_sinc_filter())


class WNConv1d(nn.Module):
    """Conv1d or ConvTranspose1d with legacy weight norm (``weight_g``, ``weight_v``) until folded."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 padding: int = 0, transposed: bool = False, bias: bool = True):
        super().__init__()
        self.stride, self.dilation, self.padding, self.transposed = stride, dilation, padding, transposed
        shape = (c_in, c_out, kernel_size) if transposed else (c_out, c_in, kernel_size)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_g = nn.Parameter(torch.empty(shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(shape))
        if not self.weight_v.is_meta:  # meta builds only need shapes, and norms on meta are slow
            nn.init.normal_(self.weight_v, 0.0, INIT_STD)
            with torch.no_grad():
                self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))  # effective weight = v

    def effective_weight(self) -> torch.Tensor:
        if "weight" in self._parameters:
            return self.weight
        norm = self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1)
        return self.weight_v * (self.weight_g / norm)

    def remove_weight_norm(self) -> None:
        """Replace ``weight_g``/``weight_v`` by the plain ``weight`` they define."""
        weight = self.effective_weight().detach()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        if self.transposed:
            return F.conv_transpose1d(x, w, self.bias, self.stride, self.padding)
        return F.conv1d(x, w, self.bias, self.stride, self.padding, self.dilation)


class SnakeBeta(nn.Module):
    """y = x + sin^2(x * e^alpha) / (e^beta + eps), per channel (log-scale parameters)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]  # (1, C, 1)
        inv_beta = 1.0 / (self.beta.exp()[None, :, None] + SNAKE_EPS)
        return torch.addcmul(x, inv_beta, torch.sin(x * alpha).square())

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` written into ``x`` (a temporary the caller owns): one buffer instead of three."""
        alpha = self.alpha.exp()[None, :, None]  # (1, C, 1)
        inv_beta = 1.0 / (self.beta.exp()[None, :, None] + SNAKE_EPS)
        wave = torch.mul(x, alpha).sin_().square_()
        return x.addcmul_(inv_beta, wave)


class UpSample1d(nn.Module):
    """x2 upsampling: replicate pad, zero-stuff + low-pass (transposed conv, gain 2), crop."""

    def __init__(self):
        super().__init__()
        self.register_buffer("filter", _filter_buffer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        x = F.pad(x, (UP_PAD, UP_PAD), mode="replicate")
        # depthwise (groups=C): far faster on CPU than folding channels into the batch with one filter
        x = AA_RATIO * F.conv_transpose1d(x, self.filter.expand(C, -1, -1), stride=AA_RATIO, groups=C)
        return x[..., UP_CROP:-UP_CROP]


class LowPassFilter1d(nn.Module):
    """Replicate-padded low-pass with stride 2."""

    def __init__(self):
        super().__init__()
        self.register_buffer("filter", _filter_buffer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        x = F.pad(x, DOWN_PAD, mode="replicate")
        return F.conv1d(x, self.filter.expand(C, -1, -1), stride=AA_RATIO, groups=C)


class DownSample1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.lowpass = LowPassFilter1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


def _fir(x: torch.Tensor, taps: list[float], n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[..., j] (+)= sum_k taps[k] * x[..., j + k] for j < n, one filter for every channel, as
    multiply-adds over shifted views: for 6 taps about twice as fast on a CPU as a depthwise conv1d."""
    if out is None:
        out = x[..., :n] * taps[0]
    else:
        out.add_(x[..., :n], alpha=taps[0])
    for k in range(1, len(taps)):
        out.add_(x[..., k : k + n], alpha=taps[k])
    return out


def anti_aliased_snake(x: torch.Tensor, act: SnakeBeta, up_filter: torch.Tensor,
                       down_filter: torch.Tensor) -> torch.Tensor:
    """``DownSample1d(act(UpSample1d(x)))`` computed by phases: (B, C, T) -> (B, C, T), equal within rounding.

    With f the 12-tap filter and x replicate-padded, the x2 upsampled signal is y[2n] = 2 sum_k x[n-5+k]
    f[11-2k] and y[2n+1] = 2 sum_k x[n-5+k] f[10-2k] (k = 0..5): two 6-tap FIRs, without the zeros a
    transposed conv multiplies, and with no crop. The strided low-pass of z = act(y) keeps
    d[n] = sum_q f[2q+1] z[2(n+q-2)] + f[2q] z[2(n+q-3)+1]: a 6-tap FIR on each phase, computing only the
    kept samples. The even phase is laid out from sample -2 and the odd one from -3 so that both line up;
    their edge samples are set to z's replicate padding (y[0] on the left, y[2T-1] on the right), which the
    activation maps like any other sample. The phases are temporaries, so the activation runs in place.
    """
    T, half = x.shape[-1], AA_TAPS // AA_RATIO
    f_up, f_down = up_filter.view(-1).tolist(), down_filter.view(-1).tolist()
    xp = F.pad(x, (UP_PAD, UP_PAD), mode="replicate")  # (B, C, T + 10)
    n = T + half - 1  # phase samples from -2 (even) / -3 (odd) to the right edge's padding
    even = _fir(xp, [AA_RATIO * f_up[AA_TAPS - 1 - 2 * k] for k in range(half)], n)  # even[j] = y[2(j-2)]
    odd = _fir(xp, [AA_RATIO * f_up[AA_TAPS - 2 - 2 * k] for k in range(half)], n)  # odd[j] = y[2(j-3)+1]
    first, last = even[..., 2:3], odd[..., T + 2 : T + 3]  # y[0], y[2T-1]
    even[..., :2], odd[..., :3] = first, first
    even[..., T + 2 :], odd[..., T + 3 :] = last, last
    out = _fir(act.forward_(even), f_down[1::2], T)  # (B, C, T)
    return _fir(act.forward_(odd), f_down[0::2], T, out)


class Activation1d(nn.Module):
    """Anti-aliased SnakeBeta: upsample x2 -> SnakeBeta -> low-pass and downsample x2.

    ``upsample``/``downsample`` hold the filters under the official keys and are the reference steps;
    ``forward`` computes the same by phases (:func:`anti_aliased_snake`), which is faster on a CPU.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.act.alpha.requires_grad):
            # training: the phase form's in-place activation would overwrite what autograd saved
            return self.reference_forward(x)
        return anti_aliased_snake(x, self.act, self.upsample.filter, self.downsample.lowpass.filter)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The three steps as the official code runs them (kept to check and time the phase form against)."""
        return self.downsample(self.act(self.upsample(x)))


class AMPBlock1(nn.Module):
    """Three residual units: act -> dilated conv -> act -> conv, each added to its input."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        same = lambda d: d * (kernel_size - 1) // 2  # noqa: E731
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=same(d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=same(1)) for _ in dilations
        )
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            xt = c2(self.activations[2 * i + 1](c1(self.activations[2 * i](x))))
            x = xt + x
        return x


def upsampling_stack(ch0: int, upsample_rates: list[int], upsample_kernel_sizes: list[int],
                     resblock_kernel_sizes: list[int], resblock_dilation_sizes: list[list[int]],
                     ) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``ups`` (transposed convs halving the channels from ``ch0``) and ``resblocks`` (one AMPBlock1 per
    kernel size after each upsampler), with the official attribute layout of BigVGAN 1.x and v2."""
    ups, resblocks = nn.ModuleList(), nn.ModuleList()
    for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
        c_in, c_out = ch0 // 2**i, ch0 // 2 ** (i + 1)
        ups.append(nn.ModuleList([WNConv1d(c_in, c_out, k, stride=u, padding=(k - u) // 2, transposed=True)]))
        for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes):
            resblocks.append(AMPBlock1(c_out, rk, rd))
    return ups, resblocks


def run_upsampling(x: torch.Tensor, ups: nn.ModuleList, resblocks: nn.ModuleList,
                   conditioning: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Each upsampler, plus ``conditioning[i]`` if given, then the mean of its AMP blocks: (B, C0, N) -> (B, C, N')."""
    num_kernels = len(resblocks) // len(ups)
    for i, up in enumerate(ups):
        x = up[0](x)
        if conditioning is not None:
            x = x + conditioning[i]
        blocks = resblocks[i * num_kernels : (i + 1) * num_kernels]
        xs = blocks[0](x)
        for block in blocks[1:]:
            xs = xs + block(x)
        x = xs / num_kernels
    return x


def fold_weight_norm(module: nn.Module) -> None:
    """Fold every ``weight_g``/``weight_v`` pair under ``module`` into a plain ``weight`` (call after loading)."""
    for sub in module.modules():
        if isinstance(sub, WNConv1d) and "weight" not in sub._parameters:
            sub.remove_weight_norm()


class BigVGAN(nn.Module):
    """The official ``BigVGAN`` generator (resblock "1", SnakeBeta with log-scale, no feature upsampling)."""

    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        self.cfg = cfg
        ch0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = WNConv1d(cfg.gpt_dim, ch0, 7, padding=3)
        self.ups, self.resblocks = upsampling_stack(ch0, cfg.upsample_rates, cfg.upsample_kernel_sizes,
                                                    cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        ch = ch0 // 2 ** len(cfg.upsample_rates)
        self.activation_post = Activation1d(ch)
        self.conv_post = WNConv1d(ch, 1, 7, padding=3)
        self.speaker_encoder = ECAPA_TDNN(cfg.num_mels, cfg.speaker_embedding_dim)
        self.cond_layer = nn.Conv1d(cfg.speaker_embedding_dim, ch0, 1)
        if cfg.cond_d_vector_in_each_upsampling_layer:
            self.conds = nn.ModuleList(
                nn.Conv1d(cfg.speaker_embedding_dim, ch0 // 2 ** (i + 1), 1) for i in range(len(self.ups))
            )
        else:
            self.conds = None

    @property
    def hop_length(self) -> int:
        """Output samples per latent frame (1024 for IndexTTS)."""
        return math.prod(self.cfg.upsample_rates)

    def remove_weight_norm(self) -> None:
        """Fold every ``weight_g``/``weight_v`` pair into a plain ``weight`` (call after loading)."""
        fold_weight_norm(self)

    def speaker_embedding(self, mel_ref: torch.Tensor) -> torch.Tensor:
        """ECAPA-TDNN embedding of a reference log-mel: (B, T, num_mels) -> (B, 1, speaker_embedding_dim).

        Rows must be whole references of one length: the official pooling has no padding mask.
        """
        return self.speaker_encoder(mel_ref)

    def forward(self, latents: torch.Tensor, mel_ref: torch.Tensor | None = None, *,
                speaker: torch.Tensor | None = None) -> torch.Tensor:
        """Waveform in [-1, 1]: latents (B, N, gpt_dim) -> (B, 1, N * hop_length).

        Give either ``mel_ref`` (B, T, num_mels) or a precomputed ``speaker`` (B or 1, 1, dim) embedding;
        a batch of 1 is shared by every latent row.
        """
        if speaker is None:
            if mel_ref is None:
                raise ValueError("BigVGAN needs mel_ref or a precomputed speaker embedding")
            speaker = self.speaker_embedding(mel_ref)
        spk = speaker.transpose(1, 2)  # (B, dim, 1), broadcast over time
        x = self.conv_pre(latents.transpose(1, 2)) + self.cond_layer(spk)  # (B, C0, N)
        conditioning = None if self.conds is None else [cond(spk) for cond in self.conds]
        x = run_upsampling(x, self.ups, self.resblocks, conditioning)
        return torch.tanh(self.conv_post(self.activation_post(x)))  # (B, 1, N * hop)
