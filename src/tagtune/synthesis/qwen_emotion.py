"""Text -> the 8 emotion weights of IndexTTS2, with the QwenEmotion model of an IndexTTS-2 folder.

QwenEmotion (``qwen0.6bemo4-merge/``) is a small causal LM fine-tuned to answer a chat whose system prompt is
"文本情感分类" (text emotion classification) with a JSON object of Chinese emotion names and scores. The answer
is read as the official code reads it:

* text after the last ``</think>`` token; JSON, or else ``name: number`` pairs found in the text;
* a single label (``{"emotion": "高兴"}`` or the English name) counts as 1.0 for that emotion;
* the model cannot tell sad from melancholic, so when the text names melancholy the two scores swap;
* scores are clamped to [0, 1.2], missing ones are 0, and all-zero becomes calm = 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

SYSTEM_PROMPT = "文本情感分类"
# the emotion vector's order, with the names the model answers in
EMOTIONS = (("高兴", "happy"), ("愤怒", "angry"), ("悲伤", "sad"), ("恐惧", "afraid"), ("反感", "disgusted"),
            ("低落", "melancholic"), ("惊讶", "surprised"), ("自然", "calm"))
LABEL_KEYS = ("emotion", "emotion_label", "label", "情感", "情绪")
MELANCHOLIC_WORDS = ("低落", "melancholy", "melancholic", "depression", "depressed", "gloomy")
SAD, MELANCHOLIC, CALM = "悲伤", "低落", "自然"
MIN_SCORE, MAX_SCORE = 0.0, 1.2
END_OF_THINKING = "</think>"
MAX_NEW_TOKENS = 512  # the answer is one short JSON object


def _label(value) -> str | None:
    """A Chinese or English emotion name -> its Chinese key."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    for cn, en in EMOTIONS:
        if value == cn or value.lower() == en:
            return cn
    return None


def parse_answer(answer: str) -> dict:
    """The model's answer text -> {name: score} as written (JSON, or ``name: number`` pairs)."""
    try:
        content = json.loads(answer)
    except json.JSONDecodeError:
        return {m.group(1): float(m.group(2)) for m in re.finditer(r'([^\s":.,]+?)"?\s*:\s*([\d.]+)', answer)}
    return content if isinstance(content, dict) else {"emotion": content}


def emotion_weights(content: dict, text: str) -> list[float]:
    """{Chinese name or label key: score} of one answer about ``text`` -> the 8 weights in vector order."""
    scores = dict(content)
    if all(cn not in scores for cn, _ in EMOTIONS):
        found = next((c for c in (_label(scores.get(k)) for k in LABEL_KEYS) if c), None)
        if found is not None:
            scores[found] = 1.0
    for cn, _ in EMOTIONS:  # a label given as a value ("高兴": "happy") counts as 1 for that emotion
        named = _label(scores.get(cn))
        if named is not None:
            scores[cn] = 1.0 if named == cn else 0.0
            scores[named] = 1.0
    if any(word in text.lower() for word in MELANCHOLIC_WORDS):
        scores[SAD], scores[MELANCHOLIC] = scores.get(MELANCHOLIC, 0.0), scores.get(SAD, 0.0)
    weights = []
    for cn, _ in EMOTIONS:
        try:
            weights.append(max(MIN_SCORE, min(MAX_SCORE, float(scores.get(cn, 0.0)))))
        except (TypeError, ValueError):
            raise ValueError(f"QwenEmotion answered a non-numeric score {scores.get(cn)!r} for {cn}") from None
    if all(w <= 0.0 for w in weights):
        weights[[cn for cn, _ in EMOTIONS].index(CALM)] = 1.0
    return weights


class QwenEmotion:
    """The QwenEmotion model of a folder, through transformers."""

    def __init__(self, tokenizer, model):
        self.tokenizer, self.model = tokenizer, model

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> QwenEmotion:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        return cls(tokenizer, model.to(device).eval())

    @torch.no_grad()
    def answer(self, text: str) -> str:
        """The model's reply to ``text`` (greedy), after its thinking section."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                    enable_thinking=False)
        inputs = self.tokenizer([prompt], return_tensors="pt").to(self.model.device)
        out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                  pad_token_id=self.tokenizer.eos_token_id)
        ids = out[0][inputs["input_ids"].shape[1]:].tolist()
        think = self.tokenizer.convert_tokens_to_ids(END_OF_THINKING)
        start = len(ids) - ids[::-1].index(think) if isinstance(think, int) and think in ids else 0
        return self.tokenizer.decode(ids[start:], skip_special_tokens=True)

    def weights(self, text: str) -> list[float]:
        """The 8 emotion weights for ``text``."""
        return emotion_weights(parse_answer(self.answer(text)), text)
