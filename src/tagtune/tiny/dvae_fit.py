"""The tiny DVAE: a seeded random encoder, a k-means codebook with the silence code, a briefly fitted decoder.

Training a VQ-VAE is slow and fragile on a CPU; a random convolutional encoder already maps each 4-frame
mel window to a vector that keeps most of its information, and clustering those vectors gives a codebook
in which every code is used. The decoder is then fitted to turn codes back into mels, so a code stream can
be inspected (and events detected) without the vocoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagtune.audio import LOG_FLOOR
from tagtune.config import DVAEConfig
from tagtune.models.dvae import DiscreteVAE
from tagtune.tiny.kmeans import SILENCE_CODE, kmeans, place_silence

KMEANS_MAX_VECTORS = 40_000  # a seeded subsample is plenty for 256 centroids and keeps k-means fast
SILENCE_FRAMES = 64  # long enough that the middle of the encoded silence is free of edge effects
DECODER_LR = 3e-3
DECODER_BATCH = 16
DECODER_CROP_FRAMES = 128  # mel frames per training crop (a multiple of 4: whole codes)


def silence_vector(dvae: DiscreteVAE, channels: int) -> torch.Tensor:
    """Encoder output for digital silence (log-mel = ln(1e-7) everywhere), away from the edges: (dim,)."""
    mel = torch.full((1, channels, SILENCE_FRAMES), float(torch.log(torch.tensor(LOG_FLOOR))))
    with torch.no_grad():
        z = dvae.encode(mel)  # (1, dim, T_c)
    return z[0, :, z.shape[-1] // 2]


def encoder_vectors(dvae: DiscreteVAE, mels: list[torch.Tensor], seed: int) -> torch.Tensor:
    """Encoder outputs of all mels, subsampled (seeded) to at most KMEANS_MAX_VECTORS: (N, dim)."""
    with torch.no_grad():
        z = torch.cat([dvae.encode(m[None])[0].T for m in mels])  # (N, dim)
    if len(z) > KMEANS_MAX_VECTORS:
        keep = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:KMEANS_MAX_VECTORS]
        z = z[keep.sort().values]
    return z


def init_codebook(dvae: DiscreteVAE, mels: list[torch.Tensor], seed: int) -> dict:
    """Set ``codebook.embed`` to k-means centroids with digital silence at SILENCE_CODE; returns stats."""
    cfg = dvae.cfg
    z = encoder_vectors(dvae, mels, seed)
    centroids = place_silence(kmeans(z, cfg.num_tokens, seed), silence_vector(dvae, cfg.channels))
    with torch.no_grad():
        dvae.codebook.embed.copy_(centroids.T)  # (dim, K): column j = code j
        dvae.codebook.embed_avg.copy_(centroids.T)
    counts = torch.bincount(dvae.codebook.nearest(z), minlength=cfg.num_tokens)
    with torch.no_grad():
        dvae.codebook.cluster_size.copy_(counts.float())
    return {"kmeans_vectors": len(z), "codes_used": int((counts > 0).sum()), "num_tokens": cfg.num_tokens}


def _crop_batch(mels: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """DECODER_BATCH random crops of DECODER_CROP_FRAMES frames (shorter clips are floor-padded)."""
    rows = []
    for i in torch.randint(len(mels), (DECODER_BATCH,), generator=gen).tolist():
        mel = mels[i]
        if mel.shape[1] < DECODER_CROP_FRAMES:
            mel = F.pad(mel, (0, DECODER_CROP_FRAMES - mel.shape[1]), value=mel.min().item())
        start = int(torch.randint(mel.shape[1] - DECODER_CROP_FRAMES + 1, (1,), generator=gen))
        rows.append(mel[:, start : start + DECODER_CROP_FRAMES])
    return torch.stack(rows)  # (B, 100, frames)


def fit_decoder(dvae: DiscreteVAE, mels: list[torch.Tensor], steps: int, seed: int) -> dict:
    """Fit the decoder (codes -> mel) with the official smooth-L1 loss; encoder and codebook stay fixed."""
    gen = torch.Generator().manual_seed(seed)
    params = list(dvae.decoder.parameters())
    opt = torch.optim.Adam(params, lr=DECODER_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    first = last = float("nan")
    for step in range(steps):
        mel = _crop_batch(mels, gen)
        codes = dvae.get_codebook_indices(mel)  # (B, frames / 4)
        loss = F.smooth_l1_loss(dvae.decode(codes), mel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    return {"decoder_steps": steps, "decoder_loss_first": first, "decoder_loss_last": last}


def reconstruction_l1(dvae: DiscreteVAE, mels: list[torch.Tensor]) -> float:
    """Mean |mel - decode(codes(mel))| over the given mels (frames past each mel's end ignored)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for mel in mels:
            rec = dvae.decode(dvae.get_codebook_indices(mel[None]))[0, :, : mel.shape[1]]
            total += (rec - mel).abs().sum().item()
            count += mel.numel()
    return total / max(count, 1)


def build_dvae(cfg: DVAEConfig, mels: list[torch.Tensor], seed: int, decoder_steps: int) -> tuple[DiscreteVAE, dict]:
    """A DiscreteVAE for ``cfg``: seeded random encoder, k-means codebook, fitted decoder; plus stats."""
    torch.manual_seed(seed)
    dvae = DiscreteVAE(cfg)
    stats = init_codebook(dvae, mels, seed)
    dvae.train()
    stats |= fit_decoder(dvae, mels, decoder_steps, seed + 1)
    dvae.eval()
    stats["silence_code"] = SILENCE_CODE
    return dvae, stats
