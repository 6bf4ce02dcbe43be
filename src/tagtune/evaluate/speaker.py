"""A small speaker embedding that reads DVAE codes, trained like the event detector on the corpus's own clips.

It measures voice drift: how close generated speech stays to its reference speaker (after a single-speaker
fine-tune, say). As with the event detector, speech is judged on DVAE codes, not audio, because a tiny model's
vocoder may be weak. A clip's codes become one feature vector by pooling over frames:

- the mean and standard deviation of its DVAE codebook vectors, and the mean absolute value and standard
  deviation of their frame-to-frame changes (the detector's window features, over the whole clip);
- the covariance of the codebook vectors, in at most ``COV_DIM`` principal directions of the codebook (a voice
  is more in how the dimensions move together than in their means);
- how often each code occurs (which mel shapes a voice ever produces).

A class-balanced multinomial logistic regression with an L2 penalty (full-batch L-BFGS, as the detector's)
tells the training speakers apart. The embedding is not its posteriors, which only know the training
speakers: it is the space the classifier's weights span (their left singular vectors, at most
``EMBED_DIM`` of them, from speakers - 1 directions), so a voice never seen in training still lands somewhere
meaningful. An embedding is unit-norm; similarity is the cosine.

Training clips carry only a speaker label, not a language, so clips of one voice in English and in Chinese
fall in one class and the directions that tell them apart are the ones the voice does not change with
language. Fit on many voices (at least ``MIN_SPEAKERS``): with few, the space has few dimensions.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from tagtune.evaluate.detector import logistic_regression

MIN_CODES = 8  # codes a clip needs (~0.34 s): fewer say little about a voice
MIN_SPEAKERS = 3  # two speakers give a one-dimensional space, whose cosine is only +-1
EMBED_DIM = 32  # at most this many dimensions (fewer when there are fewer training speakers)
COV_DIM = 32  # principal directions of the codebook whose covariance is pooled
L2 = 1e-2
LBFGS_STEPS = 200
MAX_CLIPS_PER_SPEAKER = 400
FORMAT = 1  # the layout of ``to_dict``


class TooShortError(ValueError):
    """A code sequence has fewer than MIN_CODES DVAE codes."""


def codebook_basis(codebook: torch.Tensor, k: int = COV_DIM) -> torch.Tensor:
    """(dim, min(dim, k)) principal directions of the codebook vectors, largest variance first."""
    centred = codebook - codebook.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return vectors.flip(1)[:, : min(k, codebook.shape[1])].contiguous()


def clip_features(codes: torch.Tensor, codebook: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Codes (N,) with N >= 3 -> (4 * dim + k * (k + 1) / 2 + n_codes,) pooled features of the clip."""
    vec = codebook[codes]  # (N, dim)
    change = vec[1:] - vec[:-1]  # (N - 1, dim)
    low = (vec - vec.mean(0)) @ basis  # (N, k)
    cov = low.T @ low / len(codes)  # (k, k)
    upper = torch.triu_indices(len(cov), len(cov))
    histogram = torch.bincount(codes, minlength=len(codebook)).float() / len(codes)  # (n_codes,)
    return torch.cat([vec.mean(0), vec.std(0), change.abs().mean(0), change.std(0), cov[upper[0], upper[1]],
                      histogram])


class CodeSpeakerEmbedding:
    """Unit-norm speaker embeddings of DVAE code sequences; ``fit`` then ``embed`` / ``similarity``."""

    def __init__(self, codebook: torch.Tensor):
        self.codebook = codebook.detach().float().cpu()  # (n_codes, dim)
        self.basis = codebook_basis(self.codebook)  # (dim, k)
        self.speakers: list[str] = []
        self.mean = self.std = self.projection = None
        self.summary: dict = {}

    # -- input -----------------------------------------------------------------------------------------

    def _dvae_codes(self, codes) -> torch.Tensor:
        """A 1-D sequence of DVAE codes; a sampled start/stop mel id (>= n_codes) is dropped."""
        codes = torch.as_tensor(codes)
        if codes.dim() == 2 and codes.shape[0] == 1:
            codes = codes[0]
        if codes.dim() != 1:
            raise ValueError(f"codes must be one sequence of shape (N,) or (1, N), got shape {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer DVAE code ids, got dtype {codes.dtype}")
        codes = codes.long().cpu()
        if len(codes) and int(codes.min()) < 0:
            raise ValueError(f"codes must be DVAE code ids >= 0, got {int(codes.min())}")
        codes = codes[codes < len(self.codebook)]
        if len(codes) < MIN_CODES:
            raise TooShortError(f"a speaker embedding needs at least {MIN_CODES} DVAE codes, got {len(codes)}")
        return codes

    def features(self, codes) -> torch.Tensor:
        """(F,) pooled, unstandardised features of one code sequence."""
        return clip_features(self._dvae_codes(codes), self.codebook, self.basis)

    # -- training --------------------------------------------------------------------------------------

    def fit(self, clips: list[tuple[torch.Tensor, str]], seed: int = 0, heldout_fraction: float = 0.25) -> dict:
        """Train on (codes, speaker) clips, holding out ``heldout_fraction`` of each speaker's to report on.

        Returns the counts (speakers, clips used for training and held out, clips skipped as shorter than
        MIN_CODES), the held-out speaker-identification accuracy of the classifier and of the nearest
        training centroid in embedding space, and verification on held-out pairs: mean cosine of same- and
        different-speaker pairs and the equal error rate. Held-out figures are None with no held-out clips.
        The split and per-speaker subsample are the only random choices, drawn from ``seed``.
        """
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in [0, 1), got {heldout_fraction}")
        by_speaker, skipped = self._group(clips)
        if len(by_speaker) < MIN_SPEAKERS:
            raise ValueError(f"a speaker embedding needs clips of at least {MIN_SPEAKERS} speakers of >= "
                             f"{MIN_CODES} codes each, got {len(by_speaker)}")
        train, held = _split(by_speaker, seed, heldout_fraction)
        self.speakers = sorted(by_speaker)
        x, y = self._xy(train)
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        counts = torch.bincount(y, minlength=len(self.speakers)).float()
        weight, bias = logistic_regression((x - self.mean) / self.std, y, counts.sum() / (len(counts) * counts),
                                          l2=L2, steps=LBFGS_STEPS)
        self.projection = _span(weight, min(EMBED_DIM, len(self.speakers) - 1))
        self.summary = {"speakers": len(self.speakers), "train_clips": len(y), "heldout_clips": len(held),
                        "skipped_short": skipped, "embedding_dim": self.projection.shape[1], "seed": seed}
        self.summary |= self._held_out(x, y, held, weight, bias)
        return dict(self.summary)

    def _group(self, clips) -> tuple[dict[str, list[torch.Tensor]], int]:
        by_speaker: dict[str, list[torch.Tensor]] = {}
        skipped = 0
        for codes, speaker in clips:
            try:
                feats = self.features(codes)
            except TooShortError:
                skipped += 1  # too short to say anything about the voice
                continue
            by_speaker.setdefault(str(speaker), []).append(feats)
        return by_speaker, skipped

    def _xy(self, pairs: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([f for f, _ in pairs]), torch.tensor([self.speakers.index(s) for _, s in pairs])

    def _held_out(self, x: torch.Tensor, y: torch.Tensor, held, weight, bias) -> dict:
        """Identification and verification figures of the held-out clips."""
        if not held:
            return {"accuracy": None, "centroid_accuracy": None, **verification(torch.zeros(0, 1), [])}
        hx, hy = self._xy(held)
        hz = (hx - self.mean) / self.std
        accuracy = float(((hz @ weight + bias).argmax(1) == hy).float().mean())
        centroids = F.normalize(torch.stack([self._project(x[y == k]).mean(0) for k in range(len(self.speakers))]))
        emb = self._project(hx)  # (H, r)
        centroid_accuracy = float(((emb @ centroids.T).argmax(1) == hy).float().mean())
        return {"accuracy": accuracy, "centroid_accuracy": centroid_accuracy,
                **verification(emb, [self.speakers[k] for k in hy.tolist()])}

    # -- use -------------------------------------------------------------------------------------------

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) features -> (B, r) unit-norm embeddings."""
        if self.projection is None:
            raise RuntimeError("the speaker embedding is not fitted: call fit() or from_dict() first")
        return F.normalize((x - self.mean) / self.std @ self.projection, dim=1)

    def embed(self, codes) -> torch.Tensor:
        """Codes (N,) or (1, N) -> (r,) unit-norm speaker embedding."""
        return self._project(self.features(codes)[None])[0]

    def similarity(self, codes_a, codes_b) -> float:
        """Cosine of the two sequences' embeddings, in [-1, 1]."""
        return float(self.embed(codes_a) @ self.embed(codes_b))

    # -- files -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything ``from_dict`` needs, as JSON-ready lists (the codebook included, so it reloads alone)."""
        if self.projection is None:
            raise RuntimeError("the speaker embedding is not fitted: nothing to save")
        return {"format": FORMAT, "speakers": list(self.speakers), "summary": dict(self.summary),
                **{k: getattr(self, k).tolist() for k in ("codebook", "basis", "mean", "std", "projection")}}

    @classmethod
    def from_dict(cls, data: dict) -> CodeSpeakerEmbedding:
        """The embedding ``to_dict`` described (values may be lists or tensors)."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a speaker embedding of format {FORMAT}: format {data.get('format')!r}")
        emb = cls(torch.as_tensor(data["codebook"], dtype=torch.float32))
        emb.basis = torch.as_tensor(data["basis"], dtype=torch.float32)  # eigenvector signs are not portable
        emb.mean, emb.std, emb.projection = (torch.as_tensor(data[k], dtype=torch.float32)
                                             for k in ("mean", "std", "projection"))
        emb.speakers, emb.summary = list(data["speakers"]), dict(data.get("summary", {}))
        if emb.mean.shape[0] != emb.projection.shape[0]:
            raise ValueError(f"speaker embedding: mean has {emb.mean.shape[0]} features, projection "
                             f"{emb.projection.shape[0]}")
        return emb


def _split(by_speaker: dict[str, list[torch.Tensor]], seed: int, fraction: float):
    """(train, held) lists of (features, speaker): a seeded share of each speaker's clips is held out,
    never a speaker's only clip; at most MAX_CLIPS_PER_SPEAKER clips of a speaker are used."""
    rng = random.Random(seed)
    train, held = [], []
    for speaker in sorted(by_speaker):
        feats = list(by_speaker[speaker])
        rng.shuffle(feats)
        feats = feats[:MAX_CLIPS_PER_SPEAKER]
        n_held = min(len(feats) - 1, max(1 if fraction > 0 else 0, round(fraction * len(feats))))
        held += [(f, speaker) for f in feats[:n_held]]
        train += [(f, speaker) for f in feats[n_held:]]
    return train, held


def _span(weight: torch.Tensor, r: int) -> torch.Tensor:
    """(F, r) orthonormal basis of the directions the classifier uses (weights centred over speakers: adding
    one vector to every speaker's weights changes no posterior, so that direction tells no one apart)."""
    u, _, _ = torch.linalg.svd(weight - weight.mean(1, keepdim=True), full_matrices=False)
    return u[:, :r].contiguous()


def verification(emb: torch.Tensor, speakers: list[str]) -> dict:
    """Mean cosine of same- and different-speaker pairs of unit-norm (B, r) embeddings, and the equal error
    rate of accepting a pair as one speaker when its cosine passes a threshold (None without both kinds)."""
    if len(speakers) < 2:
        return {"same_speaker_cosine": None, "different_speaker_cosine": None, "eer": None}
    ids = {s: k for k, s in enumerate(dict.fromkeys(speakers))}
    labels = torch.tensor([ids[s] for s in speakers])
    i, j = torch.triu_indices(len(speakers), len(speakers), offset=1)
    scores, same = (emb @ emb.T)[i, j], labels[i] == labels[j]
    if same.all() or not same.any():
        return {"same_speaker_cosine": float(scores[same].mean()) if same.any() else None,
                "different_speaker_cosine": float(scores[~same].mean()) if (~same).any() else None, "eer": None}
    return {"same_speaker_cosine": float(scores[same].mean()), "different_speaker_cosine": float(scores[~same].mean()),
            "eer": equal_error_rate(scores[same], scores[~same])}


def equal_error_rate(same: torch.Tensor, different: torch.Tensor) -> float:
    """The error rate where false rejections of ``same`` meet false acceptances of ``different`` (accept when
    score >= threshold; the best max of the two over every threshold)."""
    scores = torch.cat([same, different])
    is_same = torch.cat([torch.ones_like(same), torch.zeros_like(different)])
    order = scores.argsort()
    below_same = torch.cat([torch.zeros(1), is_same[order].cumsum(0)])  # same pairs under each threshold
    below_diff = torch.cat([torch.zeros(1), (1 - is_same[order]).cumsum(0)])
    false_reject = below_same / len(same)
    false_accept = 1 - below_diff / len(different)
    return float(torch.maximum(false_reject, false_accept).min())
