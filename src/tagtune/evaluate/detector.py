"""A small event detector that reads DVAE codes, trained on the corpus's own event segments.

Generated speech is judged without the vocoder (a tiny model's vocoder may be weak): a window of codes is
described by its DVAE codebook vectors (mean, standard deviation and mean absolute change over the window),
and a class-balanced multinomial logistic regression tells "none" from each tag. Training windows come
from the prepared training clips: a window is an event of tag t when the event covers most of it, "none"
when no event touches it, and is skipped otherwise. Detection marks runs of event windows.

Real recordings alone teach "recorded speech" vs "event", and a model's generated codes (a tiny model's
speech is rougher than the recordings) then read as events everywhere. So ``fit`` also takes *generated
negatives*: codes a base model that has never produced an event samples for tag-free prompts of the
training split. They join the "none" class as a pool of their own (capped like a class), so the detector
learns "speech, recorded or generated" vs "event".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tagtune.audio import SAMPLES_PER_CODE

NONE = "none"
WINDOW = 8  # DVAE codes per window (~0.34 s; the same time at other code rates), shrunk for shorter events
MIN_WINDOW = 3
COVERAGE = 0.6  # share of a window an event must cover to label it
STRIDE_TRAIN = 2
# A detection needs a run of event windows at least MIN_RUN_FRACTION of a window long. The corpus's events
# last >= ~0.5 s (12 codes) and light up >= ~10 windows of 8; runs of 2-5 windows are blips of speech
# (measured on the demo: runs of 2 fire on 16% of real untagged clips and on every base generation, runs
# of 6 on 1% and ~5%, with no real event lost).
MIN_RUN_FRACTION = 0.75
THRESHOLD = 0.5  # probability of "not none" a window needs
L2 = 1e-3
LBFGS_STEPS = 200
MAX_WINDOWS_PER_CLASS = 4000


@dataclass
class Detection:
    """An event found in a code sequence."""

    tag: str
    onset: int  # first code of the event (estimated)
    end: int  # one past its last code
    confidence: float  # mean probability of the tag over the run


def window_features(codes: torch.Tensor, codebook: torch.Tensor, window: int) -> torch.Tensor:
    """Codes (N,) -> (N - window + 1, 3 * dim) features of every window (empty when N < window)."""
    codes = codes.long()
    if len(codes) < window:
        return torch.zeros(0, 3 * codebook.shape[1])
    vec = codebook[codes]  # (N, dim)
    frames = vec.unfold(0, window, 1)  # (W_n, dim, window)
    change = (vec[1:] - vec[:-1]).abs()  # (N - 1, dim)
    change = F.pad(change, (0, 0, 0, 1)).unfold(0, window, 1)[..., :-1]  # (W_n, dim, window - 1)
    return torch.cat([frames.mean(-1), frames.std(-1), change.mean(-1)], dim=1)


def window_labels(n_codes: int, spans: list[tuple[str, int, int]], window: int) -> list[str | None]:
    """Per window start: the tag covering >= COVERAGE of it, "none" when untouched, None (skip) otherwise."""
    labels: list[str | None] = []
    for s in range(max(0, n_codes - window + 1)):
        label: str | None = NONE
        for tag, a, b in spans:
            overlap = min(b, s + window) - max(a, s)
            if overlap >= COVERAGE * window:
                label = tag
                break
            if overlap > 0:
                label = None
        labels.append(label)
    return labels


def longest_window(samples_per_code: int = SAMPLES_PER_CODE) -> int:
    """The longest window in codes at a code rate: WINDOW DVAE codes' duration (0.34 s), so that windows and runs
    span the same time on IndexTTS-2's 50 codes per second (17 codes) as on 1.x's DVAE codes (8)."""
    return max(MIN_WINDOW, round(WINDOW * SAMPLES_PER_CODE / samples_per_code))


def choose_window(event_lengths: list[int], samples_per_code: int = SAMPLES_PER_CODE) -> int:
    """The longest window at the code rate, or the median event length (in codes) when events are shorter."""
    longest = longest_window(samples_per_code)
    if not event_lengths:
        return longest
    median = sorted(event_lengths)[len(event_lengths) // 2]
    return max(MIN_WINDOW, min(longest, median))


class CodeEventDetector:
    """Logistic regression over window features; ``fit`` then ``detect``."""

    def __init__(self, codebook: torch.Tensor, tags: list[str], window: int = WINDOW):
        self.codebook = codebook.float()  # (n_codes, dim)
        self.classes = [NONE, *tags]
        self.window = window
        self.mean = self.std = self.weight = self.bias = None

    def _xy(self, clips: list[tuple[torch.Tensor, list]], stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for codes, spans in clips:
            feats = window_features(codes, self.codebook, self.window)
            for s, label in enumerate(window_labels(len(codes), spans, self.window)):
                if label is not None and s % stride == 0:
                    xs.append(feats[s])
                    ys.append(self.classes.index(label))
        if not xs:
            return torch.zeros(0, 3 * self.codebook.shape[1]), torch.zeros(0, dtype=torch.long)
        return torch.stack(xs), torch.tensor(ys)

    def fit(self, clips: list[tuple[torch.Tensor, list]], seed: int = 0,
            negatives: list[torch.Tensor] | None = None) -> dict:
        """Train on (codes, [(tag, first, last)]) clips plus ``negatives`` (event-free generated code
        sequences, every window "none"); returns the window counts per class (and of generated negatives)."""
        x, y = self._xy(clips, STRIDE_TRAIN)
        x, y = _cap_per_class(x, y, len(self.classes), seed)
        gx, gy = self._xy([(self._dvae_codes(c), []) for c in negatives or []], STRIDE_TRAIN)
        gx, gy = _cap_per_class(gx, gy, 1, seed)
        x, y = torch.cat([x, gx]), torch.cat([y, gy])
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        counts = torch.bincount(y, minlength=len(self.classes)).float()
        weights = torch.where(counts > 0, counts.sum() / (len(self.classes) * counts.clamp_min(1)), 0.0)
        self.weight, self.bias = logistic_regression((x - self.mean) / self.std, y, weights)
        return {**{c: int(n) for c, n in zip(self.classes, counts.tolist())}, "generated_none": len(gy)}

    def window_probs(self, codes: torch.Tensor) -> torch.Tensor:
        """(N - window + 1, classes) probabilities of every window."""
        x = (window_features(codes, self.codebook, self.window) - self.mean) / self.std
        return (x @ self.weight + self.bias).softmax(dim=1)

    def accuracy(self, clips: list[tuple[torch.Tensor, list]]) -> dict:
        """Held-out window accuracy, class-balanced accuracy and per-class recall."""
        x, y = self._xy(clips, 1)
        if not len(y):
            return {"windows": 0, "accuracy": None, "balanced_accuracy": None, "recall": {}}
        pred = ((x - self.mean) / self.std @ self.weight + self.bias).argmax(1)
        recall = {c: float((pred[y == k] == k).float().mean()) for k, c in enumerate(self.classes) if (y == k).any()}
        return {"windows": len(y), "accuracy": float((pred == y).float().mean()),
                "balanced_accuracy": sum(recall.values()) / len(recall), "recall": recall}

    def _dvae_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return codes[codes < len(self.codebook)]  # a sampled start/stop mel id is no DVAE code

    @property
    def min_run(self) -> int:
        return max(2, round(MIN_RUN_FRACTION * self.window))

    def false_positives(self, sequences: list[torch.Tensor]) -> dict:
        """On event-free code sequences: the share of windows called an event and of sequences with a detection."""
        windows = flagged = 0
        for codes in sequences:
            codes = self._dvae_codes(codes)
            if len(codes) >= self.window:
                windows += len(codes) - self.window + 1
                flagged += int(((1 - self.window_probs(codes)[:, 0]) >= THRESHOLD).sum())
        hits = [bool(self.detect(c)) for c in sequences]
        return {"sequences": len(sequences), "windows": windows,
                "window_rate": flagged / windows if windows else None,
                "sequence_rate": sum(hits) / len(hits) if hits else None}

    def detect(self, codes: torch.Tensor) -> list[Detection]:
        """Runs of at least ``min_run`` windows whose "not none" probability passes THRESHOLD."""
        codes = self._dvae_codes(codes)
        if len(codes) < self.window:
            return []
        probs = self.window_probs(codes)  # (W_n, C)
        active = ((1 - probs[:, 0]) >= THRESHOLD).tolist()
        return [self._detection(probs[s:e], s, e) for s, e in active_runs(active) if e - s >= self.min_run]

    def _detection(self, probs: torch.Tensor, s: int, e: int) -> Detection:
        mean = probs[:, 1:].mean(0)
        k = int(mean.argmax())
        lead = round((1 - COVERAGE) * self.window)  # a window turns positive before the event starts
        return Detection(self.classes[k + 1], s + lead, e - 1 + self.window - lead, float(mean[k]))


def active_runs(active) -> list[tuple[int, int]]:
    """(start, end) of every run of true values in a sequence of flags."""
    out, s = [], 0
    while s < len(active):
        if not active[s]:
            s += 1
            continue
        e = s
        while e < len(active) and active[e]:
            e += 1
        out.append((s, e))
        s = e
    return out


def _cap_per_class(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int):
    """At most MAX_WINDOWS_PER_CLASS windows of each class (a seeded subsample)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for k in range(n_classes):
        idx = (y == k).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:MAX_WINDOWS_PER_CLASS]])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]


def logistic_regression(x: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor, l2: float = L2,
                        steps: int = LBFGS_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted multinomial logistic regression with an L2 penalty, full-batch L-BFGS from zeros (deterministic):
    (weight (F, C), bias (C,)) for ``C = len(class_weights)`` classes."""
    weight = torch.zeros(x.shape[1], len(class_weights), requires_grad=True)
    bias = torch.zeros(len(class_weights), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y, weight=class_weights) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()
