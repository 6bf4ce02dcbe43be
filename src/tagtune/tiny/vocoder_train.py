"""A brief fit of the tiny BigVGAN: GPT latents of corpus codes -> 24 kHz audio, multi-resolution mel L1.

A full BigVGAN step costs seconds on a CPU, almost all of it in the AMP residual blocks of the last,
high-rate upsampling stages. Those blocks are set to exact identities (every conv weight zero through
``weight_g = 0``), so the generator's output equals a cheaper forward that skips them; only the low-rate
stages keep trainable residual blocks. What is trained is thus a real BigVGAN whose late stages are plain
upsamplers, loadable and runnable by the official code. The ECAPA speaker encoder stays at its seeded
random initialisation; its embeddings of a few prompts per speaker feed the conditioning layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tagtune.audio import mel_filterbank
from tagtune.models.bigvgan import AMPBlock1, BigVGAN, WNConv1d

SAMPLE_RATE = 24000
# (n_fft, hop, n_mels): the resolutions of the multi-resolution mel loss
LOSS_RESOLUTIONS = ((512, 128, 64), (1024, 256, 100), (2048, 512, 128))
LOSS_FLOOR = 1e-5
SEGMENT_CODES = 8  # latents per training segment (8192 samples)
WARMUP_STEPS = 20


@dataclass
class VocoderSettings:
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    full_stages: int = 2  # upsampling stages that keep trainable AMP blocks; later ones are identities
    seed: int = 0


def identity_stages(voc: BigVGAN, first_stage: int) -> list[AMPBlock1]:
    """Make the AMP blocks of stages >= ``first_stage`` exact identities (weight_g = 0, bias = 0)."""
    n = voc.num_kernels
    blocks = list(voc.resblocks[first_stage * n :])
    with torch.no_grad():
        for block in blocks:
            for conv in block.modules():
                if isinstance(conv, WNConv1d):
                    conv.weight_g.zero_()
                    conv.bias.zero_()
    return blocks


def fast_forward(voc: BigVGAN, latents: torch.Tensor, speaker: torch.Tensor, full_stages: int) -> torch.Tensor:
    """``voc(latents, speaker=speaker)`` when the AMP blocks of stages >= ``full_stages`` are identities.

    latents (B, N, gpt_dim), speaker (B, 1, dim) -> (B, 1, N * 1024). Mirrors ``BigVGAN.forward``; the
    mean of identity blocks is the input itself, so those stages reduce to upsampler + conditioning.
    """
    spk = speaker.transpose(1, 2)  # (B, dim, 1)
    x = voc.conv_pre(latents.transpose(1, 2)) + voc.cond_layer(spk)  # (B, C0, N)
    n = voc.num_kernels
    for i, up in enumerate(voc.ups):
        x = up[0](x)
        if voc.conds is not None:
            x = x + voc.conds[i](spk)
        if i < full_stages:
            blocks = voc.resblocks[i * n : (i + 1) * n]
            x = sum(block(x) for block in blocks) / n
    return torch.tanh(voc.conv_post(voc.activation_post(x)))


class MultiResolutionMelLoss(torch.nn.Module):
    """Mean L1 distance of log-mels at several STFT resolutions."""

    def __init__(self, resolutions=LOSS_RESOLUTIONS):
        super().__init__()
        self.resolutions = resolutions
        for n_fft, _, n_mels in resolutions:
            fb = mel_filterbank(n_fft // 2 + 1, n_mels, SAMPLE_RATE, 0.0, SAMPLE_RATE / 2)  # (F, n_mels)
            self.register_buffer(f"fb{n_fft}", fb)
            self.register_buffer(f"win{n_fft}", torch.hann_window(n_fft))

    def log_mel(self, wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
        spec = torch.stft(wav, n_fft, hop, window=getattr(self, f"win{n_fft}"), return_complex=True).abs()
        return torch.log(torch.clamp(spec.transpose(1, 2) @ getattr(self, f"fb{n_fft}"), min=LOSS_FLOOR))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """fake, real: (B, N) waveforms."""
        losses = [F.l1_loss(self.log_mel(fake, n, h), self.log_mel(real, n, h)) for n, h, _ in self.resolutions]
        return sum(losses) / len(losses)


def sample_segments(latents: list[torch.Tensor], wavs: list[torch.Tensor], speakers: list[torch.Tensor],
                    batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random aligned windows: latents (B, SEGMENT_CODES, D), audio (B, SEGMENT_CODES*1024), speaker (B, 1, dim)."""
    hop = 1024
    lat, aud, spk = [], [], []
    for i in torch.randint(len(latents), (batch,), generator=gen).tolist():
        n = latents[i].shape[0]
        start = int(torch.randint(max(1, n - SEGMENT_CODES + 1), (1,), generator=gen))
        seg = latents[i][start : start + SEGMENT_CODES]
        lat.append(F.pad(seg, (0, 0, 0, SEGMENT_CODES - len(seg))))
        wav = wavs[i][start * hop : (start + SEGMENT_CODES) * hop]
        aud.append(F.pad(wav, (0, SEGMENT_CODES * hop - len(wav))))
        spk.append(speakers[i])
    return torch.stack(lat), torch.stack(aud), torch.stack(spk)


def lr_at(step: int, s: VocoderSettings) -> float:
    if step < WARMUP_STEPS:
        return s.lr * (step + 1) / WARMUP_STEPS
    return s.lr * 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, s.steps - WARMUP_STEPS)))


def trainable(voc: BigVGAN, frozen: list[AMPBlock1]) -> list[torch.nn.Parameter]:
    """Every generator parameter except the ECAPA and the identity blocks."""
    skip = {id(p) for b in frozen for p in b.parameters()} | {id(p) for p in voc.speaker_encoder.parameters()}
    return [p for p in voc.parameters() if id(p) not in skip]


def unit_gain_path(voc: BigVGAN) -> None:
    """Give the upsampling path unit-norm weights (weight_g = 1): the default 0.01-std init shrinks the
    signal ~100x per layer, so the untrained output would sit at the loss floor with no useful gradient."""
    with torch.no_grad():
        for conv in (voc.conv_pre, *(up[0] for up in voc.ups), voc.conv_post):
            conv.weight_g.fill_(1.0)


def train_vocoder(voc: BigVGAN, latents: list[torch.Tensor], wavs: list[torch.Tensor],
                  speakers: list[torch.Tensor], s: VocoderSettings, log=print) -> dict:
    """Fit ``voc`` (built and seeded by the caller) on aligned (latents (N, D), audio (N*1024,)) pairs."""
    frozen = identity_stages(voc, s.full_stages)
    params = trainable(voc, frozen)
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.8, 0.99), weight_decay=0.0)  # betas: official config
    loss_fn = MultiResolutionMelLoss()
    gen = torch.Generator().manual_seed(s.seed)
    voc.train()
    history = []
    for step in range(s.steps):
        lat, real, spk = sample_segments(latents, wavs, speakers, s.batch_size, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        fake = fast_forward(voc, lat, spk, s.full_stages)[:, 0]  # (B, samples)
        loss = loss_fn(fake, real)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == s.steps - 1:
            history.append({"step": step, "mel_l1": round(loss.item(), 4)})
            log(f"vocoder step {step}: multi-resolution mel L1 {loss.item():.3f}")
    voc.eval()
    return {"steps": s.steps, "full_stages": s.full_stages, "history": history}


@torch.no_grad()
def mel_l1(voc: BigVGAN, latents: list[torch.Tensor], wavs: list[torch.Tensor], speakers: list[torch.Tensor],
           full_stages: int | None = None) -> float:
    """Mean multi-resolution mel L1 of whole clips.

    With ``full_stages`` the cheap forward is used (equal to the full one once later stages are identities).
    """
    loss_fn = MultiResolutionMelLoss()
    total = 0.0
    for lat, wav, spk in zip(latents, wavs, speakers):
        if full_stages is None:
            fake = voc(lat[None], speaker=spk[None])  # (1, 1, N * 1024)
        else:
            fake = fast_forward(voc, lat[None], spk[None], full_stages)
        n = min(fake.shape[-1], wav.shape[-1])
        total += loss_fn(fake[:, 0, :n], wav[None, :n]).item()
    return total / max(len(latents), 1)
