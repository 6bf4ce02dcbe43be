"""Events judges: did the tag's event happen, and where?

Two backends answer ``events(clips)``:

* ``AudioSetEventJudge``: any AudioSet-labelled audio tagger loaded with ``AutoModelForAudioClassification``
  (default AST). It scores sliding windows (WINDOW_S long, every HOP_S) with sigmoid class probabilities; a
  tag's probability is the highest of its AudioSet classes (the shipped ``event-map.yaml`` plus the user's).
  A window is active when some tag passes its threshold; a run of at least MIN_RUN_WINDOWS active windows is
  one event, of the tag with the highest mean margin over its threshold, starting at its first window's centre.
  ``calibrate`` sets each tag's threshold on the user's own clips (clips carrying the tag vs untagged clips,
  one half), and reports the balanced accuracy on the other half.
* ``CodeEventJudge``: the code-level detector trained on the corpus's own event segments (``detector.py``),
  for corpora with known event boundaries, such as the synthetic demo world. It reads the clips' DVAE codes.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tagtune.errors import UserError
from tagtune.evaluate.detector import CodeEventDetector, active_runs
from tagtune.evaluate.judges.base import Event, Speech, resample_to
from tagtune.evaluate.judges.hub import DEFAULT_EVENT_MODEL, JudgeModelError, load_pretrained
from tagtune.folders import shipped_event_map
from tagtune.tags.vocab import TagError, format_tag, tag_name, variant_key

WINDOW_S = 1.0  # seconds the tagger hears at a time
HOP_S = 0.25  # the step between windows: the onset resolution
MIN_RUN_WINDOWS = 2  # an event lights up at least this many windows in a row (1.25 s of audio)
DEFAULT_THRESHOLD = 0.3  # per-tag probability an active window needs before calibration
BATCH_WINDOWS = 16
CODES = "codes"  # the --event-model value that picks the code-level detector


class EventMapError(UserError):
    """An event map that cannot be read."""


def _read_map(path: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise EventMapError(f"{path}: cannot read the event map ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise EventMapError(f"{path}: an event map is a mapping tag -> list of AudioSet class names")
    return raw


def load_event_map(extra: str | Path | None = None) -> dict[str, list[str]]:
    """tag variant key -> AudioSet class names: the shipped map, updated with ``extra`` (a YAML file)."""
    out: dict[str, list[str]] = {}
    for path in [shipped_event_map()] + ([Path(extra)] if extra else []):
        try:
            out |= {variant_key(tag_name(str(k))): [str(c) for c in v] for k, v in _read_map(path).items()}
        except TagError as e:
            raise EventMapError(f"{path}: {e}") from None
    return out


def class_columns(tags: list[str], event_map: dict[str, list[str]], id2label: dict) -> dict[str, list[int]]:
    """tag -> the model's output columns of its classes; tags with none the model knows are left out."""
    by_label = {str(label).lower(): int(i) for i, label in id2label.items()}
    out = {}
    for tag in tags:
        names = event_map.get(variant_key(tag_name(tag)), [])
        columns = [by_label[n.lower()] for n in names if n.lower() in by_label]
        if columns:
            out[format_tag(tag)] = columns
    return out


def sustained(probs: np.ndarray, run: int = MIN_RUN_WINDOWS) -> np.ndarray:
    """(tags,) the highest probability each tag holds over ``run`` windows in a row (0 for shorter clips)."""
    if len(probs) < run:
        return np.zeros(probs.shape[1])
    held = np.min(np.stack([probs[k : len(probs) - run + 1 + k] for k in range(run)]), axis=0)
    return held.max(axis=0)


def _threshold(pos: list[float], neg: list[float]) -> float:
    """The cut between scores that best separates positives from negatives (balanced accuracy)."""
    values = sorted(set(pos + neg))
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])] or [DEFAULT_THRESHOLD]
    return max(cuts, key=lambda c: _balanced(pos, neg, c))


def _balanced(pos: list[float], neg: list[float], cut: float) -> float:
    return (np.mean([p >= cut for p in pos]) + np.mean([n < cut for n in neg])) / 2


class AudioSetEventJudge:
    """An AudioSet tagger turned into an events judge for ``tags`` (see the module docstring)."""

    def __init__(self, model, extractor, columns: dict[str, list[int]], *, device: str = "cpu",
                 batch_size: int = BATCH_WINDOWS, progress: bool = False, name: str = DEFAULT_EVENT_MODEL):
        self.model, self.extractor, self.columns = model.to(device).eval(), extractor, columns
        self.tags = list(columns)
        self.thresholds = dict.fromkeys(self.tags, DEFAULT_THRESHOLD)
        self.device, self.batch_size, self.progress, self.name = device, batch_size, progress, name
        self.rate = int(getattr(extractor, "sampling_rate", 16000))

    @classmethod
    def load(cls, name: str, tags: list[str], event_map: dict[str, list[str]] | None = None, **options):
        """Load ``name`` (hub id or folder) for ``tags``; an error when it knows none of their classes."""
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        model = load_pretrained("event", name, AutoModelForAudioClassification.from_pretrained)
        extractor = load_pretrained("event", name, AutoFeatureExtractor.from_pretrained)
        columns = class_columns(tags, event_map if event_map is not None else load_event_map(),
                                model.config.id2label)
        if not columns:
            raise JudgeModelError(f"the event model {name!r} knows none of the AudioSet classes the event map "
                                  f"gives for {tags}; add them to an event map (--event-map)")
        return cls(model, extractor, columns, name=name, **options)

    def _windows(self, audio: np.ndarray) -> list[np.ndarray]:
        width, hop = round(WINDOW_S * self.rate), round(HOP_S * self.rate)
        starts = range(0, max(1, len(audio) - width + hop), hop)
        return [audio[s : s + width] for s in starts]

    def frame_probs(self, clips: list[Speech]) -> list[np.ndarray]:
        """Per clip, (windows, tags) probabilities of each tag in each window (window k starts at k·HOP_S)."""
        import torch
        from tqdm.auto import tqdm

        windows, owner = [], []
        for c, clip in enumerate(clips):
            parts = self._windows(resample_to(clip.audio, clip.rate, self.rate))
            windows += parts
            owner += [c] * len(parts)
        rows = []
        batches = range(0, len(windows), self.batch_size)
        for s in tqdm(batches, desc="events judge", unit="batch", disable=not self.progress):
            feats = self.extractor(windows[s : s + self.batch_size], sampling_rate=self.rate, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in feats.items()}).logits  # (B, classes)
            probs = logits.float().sigmoid().cpu().numpy()
            rows.append(np.stack([probs[:, cols].max(axis=1) for cols in self.columns.values()], axis=1))
        table = np.concatenate(rows) if rows else np.zeros((0, len(self.tags)))
        owner_arr = np.array(owner)
        return [table[owner_arr == c] for c in range(len(clips))]

    def _events(self, probs: np.ndarray) -> list[Event]:
        margin = probs - np.array([self.thresholds[t] for t in self.tags])  # (windows, tags)
        found = []
        for s, e in active_runs((margin.max(axis=1) >= 0).tolist()):
            if e - s >= MIN_RUN_WINDOWS:
                k = int(margin[s:e].mean(axis=0).argmax())
                found.append(Event(self.tags[k], s * HOP_S + WINDOW_S / 2, (e - 1) * HOP_S + WINDOW_S,
                                   float(probs[s:e, k].mean())))
        return found

    def events(self, clips: list[Speech]) -> list[list[Event]]:
        return [self._events(p) for p in self.frame_probs(clips)]

    def calibrate(self, positives: dict[str, list[Speech]], negatives: list[Speech], seed: int = 0) -> dict:
        """Thresholds from clips carrying each tag vs untagged clips (one half); accuracy on the other half."""
        names = list(positives)
        probs = self.frame_probs([c for t in names for c in positives[t]] + negatives)
        by_tag, k = {}, 0
        for t in names:
            by_tag[t], k = probs[k : k + len(positives[t])], k + len(positives[t])
        return self.calibrate_on_probs(by_tag, probs[k:], seed)

    def calibrate_on_probs(self, positives: dict[str, list[np.ndarray]], negatives: list[np.ndarray],
                           seed: int = 0) -> dict:
        """``calibrate`` on the clips' ``frame_probs`` already computed (a caller that needs them anyway)."""
        by_tag = {t: [sustained(p) for p in probs] for t, probs in positives.items()}
        neg_scores = [sustained(p) for p in negatives]
        rng = random.Random(seed)
        report = {}
        for t in self.tags:
            col = self.tags.index(t)
            pos = [float(s[col]) for s in by_tag.get(t, [])]
            neg = [float(s[col]) for s in neg_scores]
            rng.shuffle(pos)
            rng.shuffle(neg)
            if len(pos) < 2 or len(neg) < 2:
                report[t] = {"calibrated": False, "threshold": self.thresholds[t], "positives": len(pos),
                             "negatives": len(neg), "balanced_accuracy": None}
                continue
            fit_p, test_p, fit_n, test_n = pos[::2], pos[1::2], neg[::2], neg[1::2]
            self.thresholds[t] = _threshold(fit_p, fit_n)
            report[t] = {"calibrated": True, "threshold": self.thresholds[t], "positives": len(pos),
                         "negatives": len(neg), "balanced_accuracy": float(_balanced(test_p, test_n,
                                                                                    self.thresholds[t]))}
        measured = [r["balanced_accuracy"] for r in report.values() if r["balanced_accuracy"] is not None]
        return {"method": "held-out half: clips with the tag vs untagged clips", "per_tag": report,
                "balanced_accuracy": float(np.mean(measured)) if measured else None}


class CodeEventJudge:
    """The code-level event detector as an events judge (reads ``Speech.codes``)."""

    name = CODES

    def __init__(self, detector: CodeEventDetector, held_out: dict | None = None):
        self.detector = detector
        self.tags = list(detector.classes[1:])
        self.held_out = held_out  # the detector's held-out report, as the judge accuracy

    def events(self, clips: list[Speech]) -> list[list[Event]]:
        out = []
        for clip in clips:
            if clip.codes is None:
                raise ValueError("the code-level events judge needs the clips' DVAE codes")
            per = clip.seconds_per_code
            out.append([Event(d.tag, d.onset * per, d.end * per, d.confidence)
                        for d in self.detector.detect(clip.codes)])
        return out

    def accuracy(self) -> dict:
        held = self.held_out or {}
        return {"method": "held-out windows of the corpus's event segments",
                "balanced_accuracy": held.get("balanced_accuracy"), "accuracy": held.get("accuracy"),
                "windows": held.get("windows")}
