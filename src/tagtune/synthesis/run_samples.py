"""Samples while a model trains: the recipe's ``eval.sample_sentences`` spoken by the GPT being trained.

``TrainingSamples(reference, seed=, voice=)`` is the training loop's ``on_validate`` hook. The loop hands it the
data it opened; at the first validation the hook takes the base folder from it and, without a reference, its
voice (``voice(data)``, e.g. an untagged validation clip). At each validation it speaks every sentence with the
GPT as it is at that step (adapters live, in eval mode, no gradients, back in train mode after) through the
synthesis code of the base's family: ``TTS`` for IndexTTS 1.x, ``TTSV2`` for IndexTTS-2, with the base folder's
other networks (loaded once) and the data folder's tokenizer and tags. Sentence ``i`` is sampled with seed
``seed + i`` at every step, so two steps differ only by the model, and the global random state is left as it was,
so a run with samples trains exactly as one without.

The files of a step are published whole into ``RUN_DIR/samples/step-000100/``: ``01-hello-laughs.wav``, ...
and ``index.json`` (sentence, file, seconds, seed of each). Samples are something to listen to, never a reason
to stop: a failure (an unreadable reference, a sentence with a tag the data does not know) is logged as one
warning line and training goes on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from tagtune.atomic import atomic_write_text, publish_folder
from tagtune.audio import write_wav
from tagtune.folders import SAMPLE_INDEX_FILE

log = logging.getLogger(__name__)

STEP_FOLDER = "step-{:06d}"  # one folder per validation, numbered as the run's checkpoints
SLUG_CHARS = 40  # of the sentence, in its file name


class TrainingSamples:
    """The ``on_validate`` hook that writes ``sentences`` as wav files at each validation.

    ``reference``: the voice, an audio file path or its bytes; None: ``voice(data)`` gives it at the first
    validation (None then, having said why, means no samples in this run); ``seed``: the first sentence's sampling
    seed. The base model folder the data was prepared from (it gives the vocoder and, for IndexTTS-2, the prompt
    and back-end networks) is the training data's ``base_dir``.
    """

    def __init__(self, reference=None, *, seed: int = 0, voice: Callable | None = None):
        if reference is None and voice is None:
            raise ValueError("TrainingSamples needs a reference or a voice(data) that picks one")
        self.reference, self.seed, self.voice = reference, seed, voice
        self.base_dir: Path | None = None  # from the training data, at the first validation
        self._voiced = reference is not None  # the reference is known (None after voice(data): nothing to speak)
        self._base = None  # the base folder's networks, loaded at the first validation on the GPT's device
        self._tokenizer = None

    def __call__(self, *, gpt, step: int, samples_dir: Path, sentences: list[str], tokenizer_path: Path,
                 tags_path: Path, data, **_) -> Path | None:
        """Write the samples of ``step``; returns their folder (None when there was nothing to write)."""
        if not sentences:
            return None
        try:
            if not self.resolve(data):
                return None
            return self.write(gpt, step, Path(samples_dir), sentences, tokenizer_path, tags_path)
        except Exception as e:  # noqa: BLE001 - a sample must never end a training run
            log.warning("step %d: no samples written: %s", step, " ".join(f"{type(e).__name__}: {e}".split()))
            return None

    def resolve(self, data) -> bool:
        """Take the base folder and, without a reference, the voice from the training ``data`` (a
        ``train.data.DataBundle``) once; False when there is no voice to speak in."""
        if self.base_dir is None:
            self.base_dir = Path(data.base_dir)
        if not self._voiced:
            self.reference, self._voiced = self.voice(data), True
        return self.reference is not None

    def write(self, gpt, step: int, samples_dir: Path, sentences: list[str], tokenizer_path: Path,
              tags_path: Path) -> Path:
        """Speak ``sentences`` into ``samples_dir/step-NNNNNN/`` (after ``resolve``); errors are raised."""
        tts = self.tts(gpt, tokenizer_path, tags_path)
        seeds = [self.seed + i for i in range(len(sentences))]
        was_training = gpt.training
        gpt.eval()
        try:
            with torch.inference_mode(), _kept_rng(tts.device):
                spoken = [tts.synthesize(text, self.reference, seed=s) for text, s in zip(sentences, seeds)]
        finally:
            gpt.train(was_training)
        folder = samples_dir / STEP_FOLDER.format(step)
        index = []
        with publish_folder(folder) as staging:
            for i, (text, seed, out) in enumerate(zip(sentences, seeds, spoken), start=1):
                name = sample_name(i, text)
                write_wav(staging / name, out.audio, out.sample_rate)
                index.append({"sentence": text, "file": name, "seconds": round(out.seconds, 3), "seed": seed})
            atomic_write_text(staging / SAMPLE_INDEX_FILE, json.dumps(index, indent=1, ensure_ascii=False))
        log.info("step %d: %d samples in %s", step, len(index), folder)
        return folder

    def tts(self, gpt, tokenizer_path: Path, tags_path: Path):
        """A ``TTS`` (``TTSV2`` for an IndexTTS-2 base) around the live ``gpt`` and the data's tokenizer.

        Built afresh at each call: its reference cache holds conditioning the GPT computed, which training
        changes when it trains the conditioning encoder."""
        from tagtune.loaders import load_model
        from tagtune.synthesis.tts import TTS
        from tagtune.synthesis.tts_v2 import TTSV2
        from tagtune.tags.vocab import TagSet
        from tagtune.text.tokenizer import TextTokenizer

        device = gpt.mel_head.weight.device
        if self._base is None or self._base.device != device:
            self._base = load_model(self.base_dir, device=device)
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(tokenizer_path, tagset=TagSet.load(tags_path))
        if self._base.family == "v2":
            return TTSV2(_WithGPT(self._base, gpt, self._tokenizer), name="training")
        return TTS(gpt, self._base.vocoder, self._tokenizer, self._base.mel, name="training")


class _WithGPT:
    """A loaded IndexTTS-2 folder seen with the training GPT and the data's tokenizer in place of its own."""

    def __init__(self, loaded, gpt, tokenizer):
        self._loaded, self.gpt, self.tokenizer = loaded, gpt, tokenizer

    def __getattr__(self, name: str):  # every other part: the base folder's, loaded once
        return getattr(self._loaded, name)


def sample_name(number: int, text: str) -> str:
    """``NN-<the sentence as lowercase words joined by '-'>.wav``; tags read as their words."""
    slug = re.sub(r"\W+", "-", text.lower()).strip("-")[:SLUG_CHARS].strip("-")
    return f"{number:02d}-{slug or 'sample'}.wav"


def _kept_rng(device: torch.device):
    """Sampling here leaves the global random state (CPU, and the GPU the model is on) as it found it."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
