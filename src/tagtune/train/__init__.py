"""LoRA fine-tuning of the IndexTTS GPT on tagged data: the recipe (``loop.train``) and its parts."""

from .config import TrainConfig, TrainConfigError
from .loop import RunResult, train

__all__ = ["RunResult", "TrainConfig", "TrainConfigError", "train"]
