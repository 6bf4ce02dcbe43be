"""How good the built base is, per language: validation mel-code cross-entropy and the stop-code rate.

The stop-code rate is the share of validation texts whose free-running generation (official sampling,
conditioned on another clip of the same voice) ends with the stop code before the length limit; a base
that does not stop cannot be fine-tuned into one that speaks a tag and ends.
"""

from __future__ import annotations

import torch

from tagtune.models.unified_voice import UnifiedVoice
from tagtune.tiny.corpus import Clip, by_language
from tagtune.tiny.pretrain import Example, evaluate, same_speaker
from tagtune.tiny.vocoder_stage import check_generation


def language_quality(gpt: UnifiedVoice, examples: list[Example], clips: list[Clip], train_idx: list[int],
                     val_idx: list[int], check_texts: int, seed: int) -> tuple[dict, dict]:
    """Per language: (summary numbers, the generation checks behind them); languages without clips are None."""
    mels = [c.mel for c in clips]
    pools = same_speaker(examples, train_idx + val_idx)
    return per_language(clips, val_idx, check_texts, seed, "val_mel_ce",
                        score=lambda idx: evaluate(gpt, examples, idx, mels, pools),
                        check=lambda idx, s: check_generation(gpt, examples, mels, idx, train_idx, s))


def per_language(clips: list[Clip], val_idx: list[int], check_texts: int, seed: int, ce_name: str, score,
                 check) -> tuple[dict, dict]:
    """The per-language summary of any base: ``score(indices)`` gives {"mel_loss", "text_loss"} (token CE),
    ``check(indices, seed)`` the generation checks ({"stopped": bool, ...} each) of up to ``check_texts``
    validation texts spread over the voices; the code CE is reported as ``ce_name``."""
    summary, checks = {}, {}
    for k, (lang, idx) in enumerate(by_language(clips, val_idx).items()):
        if not idx:
            summary[lang], checks[lang] = None, []
            continue
        ce = score(idx)
        checks[lang] = check(_spread(idx, check_texts), seed + k)
        stopped = sum(c["stopped"] for c in checks[lang])
        summary[lang] = {"val_clips": len(idx), ce_name: round(ce["mel_loss"], 4),
                         "val_text_ce": round(ce["text_loss"], 4), "checked": len(checks[lang]),
                         "stopped": stopped, "stop_rate": round(stopped / len(checks[lang]), 4)}
    return summary, checks


def _spread(indices: list[int], n: int) -> list[int]:
    """At most ``n`` of ``indices``, evenly spaced (so the checked texts cover every voice)."""
    if len(indices) <= n:
        return list(indices)
    return [indices[int(j)] for j in torch.linspace(0, len(indices) - 1, n).round().long().tolist()]
