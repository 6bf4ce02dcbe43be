"""LoRA fine-tuning of the IndexTTS GPT on tagged data: the recipe (``loop.train``) and its parts."""

from tagtune.train.config import TrainConfig, TrainConfigError
from tagtune.train.loop import RunResult, train

__all__ = ["RunResult", "TrainConfig", "TrainConfigError", "train"]
