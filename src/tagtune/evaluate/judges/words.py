"""Words judge: what a speech recogniser hears, through transformers' ASR pipeline (default a Whisper model).

Whisper models are told the language (``en`` / ``zh``) and the task (transcribe), so they never translate.
"""

from __future__ import annotations

from tagtune.evaluate.judges.base import Speech, resample_to
from tagtune.evaluate.judges.hub import DEFAULT_ASR_MODEL, JudgeModelError, load_pretrained

BATCH_CLIPS = 8


class AsrWordsJudge:
    """``transcribe(clips, language)`` with a ``pipeline("automatic-speech-recognition")``."""

    def __init__(self, pipe, *, batch_size: int = BATCH_CLIPS, progress: bool = False, name: str = DEFAULT_ASR_MODEL):
        self.pipe, self.batch_size, self.progress, self.name = pipe, batch_size, progress, name
        self.rate = int(pipe.feature_extractor.sampling_rate)
        self.whisper = getattr(pipe.model.config, "model_type", "") == "whisper"

    @classmethod
    def load(cls, name: str = DEFAULT_ASR_MODEL, device: str = "cpu", **options) -> AsrWordsJudge:
        from transformers import pipeline

        try:
            import jiwer  # noqa: F401  (WER / CER, the "eval" extra)
        except ImportError:
            raise JudgeModelError("the words judge scores with jiwer: pip install 'tagtune[eval]'") from None
        pipe = load_pretrained("ASR", name, lambda n: pipeline("automatic-speech-recognition", model=n, device=device))
        return cls(pipe, name=name, **options)

    def transcribe(self, clips: list[Speech], language: str) -> list[str]:
        """The recognised text of each clip."""
        from tqdm.auto import tqdm

        kwargs = {"generate_kwargs": {"language": language, "task": "transcribe"}} if self.whisper else {}
        out = []
        starts = range(0, len(clips), self.batch_size)
        for s in tqdm(starts, desc="words judge", unit="batch", disable=not self.progress):
            # the pipeline consumes its input dicts: a fresh one per clip
            inputs = [{"raw": resample_to(c.audio, c.rate, self.rate), "sampling_rate": self.rate}
                      for c in clips[s : s + self.batch_size]]
            out += [r["text"] for r in self.pipe(inputs, batch_size=self.batch_size, **kwargs)]
        return out
