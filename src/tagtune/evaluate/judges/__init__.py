"""Independent judges of a model's speech: did the tag's event happen, were the words said, is it the same voice?

    base.py     Speech, Event, Expected and the three judge interfaces (events, words, voice)
    hub.py      judge models by hub id or local folder (``from_pretrained``), with one clear error when missing
    events.py   an AudioSet tagger on sliding windows (calibrated on the corpus), or the code-level detector
    words.py    speech recognition through transformers' ASR pipeline (default Whisper)
    voice.py    speaker similarity: a transformers x-vector model, or the model's own ECAPA
    text.py     the normaliser WER / CER are computed after
    metrics.py  tag precision / recall / F1 and onset error, confusion, false events, WER / CER, similarity,
                95 % intervals by resampling clips
    suite.py    the prompt suite (shipped in English and Chinese, or the user's)
    speak.py    the models' speech for the suite, and corpus clips resynthesised for calibration
    boundaries.py  where each tag's event sounds in a corpus that lists no boundaries (``tagtune events``)
    run.py      judge_models(): the report's ``judges`` section
    report.py   its report.md section and plot
"""

from tagtune.evaluate.judges.base import JUDGE_NAMES, Event, Expected, Speech
from tagtune.evaluate.judges.hub import JudgeModelError
from tagtune.evaluate.judges.run import JudgeSettings, Panel, judge_models, open_judges

__all__ = ["JUDGE_NAMES", "Event", "Expected", "JudgeModelError", "JudgeSettings", "Panel", "Speech", "judge_models",
           "open_judges"]
