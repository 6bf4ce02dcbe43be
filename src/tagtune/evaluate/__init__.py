"""``tagtune eval``: numbers that show the tags were learned and nothing else got worse.

    loading.py     the tuned model (folder, or base + adapter) and its base (grown with untrained tag rows)
    nll.py         teacher-forced per-code NLL of many text variants, batched without padding effects
    reliance.py    NLL with the tag / without it / with a wrong tag, per event or per clip
    forgetting.py  NLL on untagged clips, tuned vs base
    detector.py    a code-level event detector trained on the corpus's event segments
    freerun.py     sampled generation from paired prompts, hits, false events, confusion, placement
    report.py      report.json and the acceptance checks (report_md.py, plots.py: report.md and PNGs)
    run.py         evaluate(): the whole evaluation
    judges/        independent judges of the models' speech on a prompt suite: events, words, voice
"""

from tagtune.evaluate.freerun import FreeRunSettings
from tagtune.evaluate.loading import EvalModel, EvaluationError, load_models
from tagtune.evaluate.run import evaluate

__all__ = ["EvalModel", "EvaluationError", "FreeRunSettings", "evaluate", "load_models"]
