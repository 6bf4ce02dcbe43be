"""Seeded k-means for the tiny DVAE codebook: diverse codes from encoder outputs, silence pinned to code 52.

A randomly initialised DVAE encoder maps every 4 mel frames to a vector; clustering those vectors gives a
codebook whose codes are all in use, so the GPT sees a varied code stream instead of a handful of ids.
Digital silence gets its own exact centroid at the official silence code, so ``remove_long_silence``
(silent token 52) behaves on this model as on the released ones.
"""

from __future__ import annotations

import torch

SILENCE_CODE = 52  # hard-coded by the official inference post-processing
DEFAULT_ITERS = 25
TOLERANCE = 1e-4  # stop when the mean squared centroid shift falls below this (relative to data variance)


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Pairwise squared L2 distances: x (N, D), centroids (K, D) -> (N, K)."""
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(1)[None, :]


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid drawn with probability proportional to squared distance."""
    first = torch.randint(len(x), (1,), generator=gen)
    centroids = [x[first[0]]]
    closest = squared_distances(x, centroids[0][None]).squeeze(1).clamp(min=0)  # (N,)
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        idx = torch.multinomial(weights, 1, generator=gen)[0]
        centroids.append(x[idx])
        closest = torch.minimum(closest, squared_distances(x, x[idx][None]).squeeze(1).clamp(min=0))
    return torch.stack(centroids)  # (K, D)


def _reseed_empty(x, centroids, counts, dist_to_own) -> torch.Tensor:
    """Move each empty centroid onto the point that is currently worst served (deterministic)."""
    empty = (counts == 0).nonzero().flatten()
    if len(empty):
        worst = dist_to_own.topk(len(empty)).indices
        centroids[empty] = x[worst]
    return centroids


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = DEFAULT_ITERS) -> torch.Tensor:
    """Lloyd's k-means on x (N, D) in float64 from a seeded k-means++ start; returns centroids (K, D) fp32."""
    if len(x) < k:
        raise ValueError(f"k-means needs at least {k} vectors, got {len(x)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.double()
    centroids = kmeans_pp_init(x, k, gen)
    scale = x.var(0).sum().clamp(min=1e-12)
    for _ in range(iters):
        dist = squared_distances(x, centroids)  # (N, K)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        new = _reseed_empty(x, new, counts, dist.gather(1, assign[:, None]).squeeze(1))
        shift = (new - centroids).pow(2).sum(1).mean() / scale
        centroids = new
        if shift < TOLERANCE:
            break
    return centroids.float()


def place_silence(centroids: torch.Tensor, silence: torch.Tensor, code: int = SILENCE_CODE) -> torch.Tensor:
    """Put the exact silence vector at index ``code``: it replaces the centroid nearest to it.

    The displaced centroid at ``code`` moves to the freed slot, so no other cluster is lost.
    """
    out = centroids.clone()
    nearest = int(squared_distances(silence[None].double(), out.double()).argmin())
    out[nearest] = out[code]
    out[code] = silence
    return out
