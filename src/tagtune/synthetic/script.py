"""What each synthetic clip says: sentences from built-in templates, with tags placed in them.

A clip is a sequence of parts, each ("speech", text) or ("tag", name); its manifest text is
the parts joined with the tags written inline as ``<name>``, exactly where the event sound
is spliced.  Everything is drawn from one generator, so a seed fixes the whole script.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORDS_PER_SECOND = 2.6  # espeak/built-in speaking rate, used to size clips
EVENT_SECONDS = 1.0  # typical event length, reserved when sizing a tagged clip
CHARS_PER_SECOND_ZH = 2.6  # espeak-ng cmn pace (measured)
TWO_TAG_PROBABILITY = 0.3
# where a tag goes: after the last word, between sentences, inside a sentence, before the first word
PLACEMENT = {"end": 0.35, "between": 0.3, "inside": 0.25, "start": 0.1}

# slot fillers, "|"-separated
SLOTS = {
    "interj": "oh|well|okay|wow|hey|so|honestly|right|um|look".split("|"),
    "person": ("my sister|the neighbour|our teacher|your cousin|the baker|my friend Sam|the old man|"
               "her brother").split("|"),
    "noun": "cake|garden|letter|bicycle|window|puppy|movie|kitchen|concert|blanket|ticket|song".split("|"),
    "adj": "tiny|strange|lovely|noisy|brand new|bright red|ridiculous|quiet|enormous|silly".split("|"),
    "verb": "found|painted|broke|cooked|borrowed|forgot|fixed|dropped|sold|hid".split("|"),
    "verb_inf": "paint|fix|find|bake|carry|visit|clean|open|watch|call".split("|"),
    "place": "at the market|in the park|behind the house|on the train|at school|by the river|in the attic".split("|"),
    "time": "yesterday|this morning|last night|on Sunday|an hour ago|after lunch|every single day".split("|"),
    "feeling": "happy|tired|surprised|nervous|excited|confused|relieved".split("|"),
}
SHORT_TEMPLATES = [
    "{interj}, really?",
    "No way!",
    "That is so {adj}.",
    "{interj}, I {verb} it.",
    "I feel {feeling}.",
    "Not the {noun}!",
]
SHORT_SECONDS = 2.2  # below this much speech, use the short templates
TEMPLATES = [
    "{interj}, {person} {verb} the {adj} {noun} {place}.",
    "I can't believe {person} {verb} my {noun} {time}.",
    "Did you really {verb_inf} the {noun} {time}?",
    "We should {verb_inf} the {adj} {noun} {place}.",
    "{person} was so {feeling} {time}.",
    "That {noun} is absolutely {adj}.",
    "{interj}, I am just a little {feeling} about the {noun}.",
    "Tell me again why you {verb} the {noun}.",
    "Maybe we can {verb_inf} it {time}.",
    "It was the most {adj} {noun} I have ever seen.",
    "Please don't {verb_inf} the {noun} {place}!",
    "You know what, I {verb} it {place}.",
]
ZH_SLOTS = {
    "who": ["我妹妹", "我的朋友", "邻居", "老师", "他哥哥"],
    "when": ["今天", "昨天晚上", "刚才", "上个周末", "每天早上"],
    "where": ["在公园里", "在厨房", "在火车上", "在学校门口", "在河边"],
    "what": ["一个蛋糕", "一封信", "一只小狗", "一辆自行车", "一部电影"],
    "how": ["开心", "紧张", "惊讶", "累", "激动"],
    "like": ["可爱", "好玩", "奇怪", "漂亮", "有意思"],
}
ZH_PUNCTUATION = ("。", "？", "！")
# everyday phrases; together they hold every character of the reference example's Chinese lines
ZH_SHORT_TEMPLATES = ["真的吗？", "太好了！", "我很{how}。", "{who}来了。", "{when}好{how}。", "哎呀！",
                      "这也太{like}了吧！", "我们得快点了！"]
ZH_TEMPLATES = ["{who}{when}{where}看到了{what}。", "{when}我真的很{how}。", "你{when}是不是{where}找到了{what}？",
                "{who}觉得特别{how}。", "忘了{who}还在那等我们呢！", "我们两个动作得快点了！",
                "{who}说{what}也太{like}了吧。", "{when}{who}{where}等我们两个呢。"]


@dataclass(frozen=True)
class ClipPlan:
    """The script of one clip: its voice, language and ordered speech/tag parts."""

    index: int
    voice: str
    language: str  # "en" or "zh"
    parts: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        """Manifest text: speech with ``<tag>`` written where each event sounds."""
        pieces = [f"<{value}>" if kind == "tag" else value for kind, value in self.parts]
        joiner = "" if self.language == "zh" else " "
        return joiner.join(pieces)

    @property
    def tags(self) -> list[str]:
        """The clip's tags in spoken order."""
        return [value for kind, value in self.parts if kind == "tag"]


def _sentence(rng: np.random.Generator, language: str, short: bool) -> list[str]:
    """One sentence as a list of units where a tag may be inserted between any two."""
    if language == "zh":
        table = ZH_SHORT_TEMPLATES if short else ZH_TEMPLATES
        template = table[rng.integers(len(table))]
        # "|" marks slot edges so a tag never lands inside a word
        filled = template.format(**{k: f"|{v[rng.integers(len(v))]}|" for k, v in ZH_SLOTS.items()})
        units = [unit for unit in filled.split("|") if unit]
        # final punctuation stays with the word before it, as in English
        if len(units) > 1 and units[-1] in ZH_PUNCTUATION:
            units[-2:] = [units[-2] + units[-1]]
        return units
    table = SHORT_TEMPLATES if short else TEMPLATES
    template = table[rng.integers(len(table))]
    filled = template.format(**{k: v[rng.integers(len(v))] for k, v in SLOTS.items()})
    return (filled[0].upper() + filled[1:]).split()


def _sentences(rng: np.random.Generator, language: str, seconds: float) -> list[list[str]]:
    """Enough sentences to fill about ``seconds`` of speech (at least one)."""
    sentences, spoken = [], 0.0
    while not sentences or spoken < seconds * 0.8:
        sentences.append(_sentence(rng, language, short=seconds - spoken < SHORT_SECONDS))
        spoken += _seconds(sentences[-1], language)
    return sentences


def _seconds(units: list[str], language: str) -> float:
    """Rough speaking time of a sentence: words for English, characters for Mandarin."""
    if language == "zh":
        return sum(len(u) for u in units) / CHARS_PER_SECOND_ZH
    return len(units) / WORDS_PER_SECOND


def _tag_positions(rng: np.random.Generator, sentences: list[list[str]], n_tags: int) -> list[int]:
    """Unit indices (0..total) before which each tag goes, ascending and distinct."""
    total = sum(len(s) for s in sentences)
    ends = np.cumsum([len(s) for s in sentences])[:-1].tolist()
    kinds, weights = zip(*PLACEMENT.items())
    positions: set[int] = set()
    for _ in range(20 * n_tags):  # retries only when a draw repeats a position
        if len(positions) == n_tags:
            break
        kind = kinds[rng.choice(len(kinds), p=np.array(weights) / sum(weights))]
        inside = list(range(1, total)) or [total]
        choices = {"end": [total], "start": [0], "between": ends or [total], "inside": inside}[kind]
        positions.add(int(choices[rng.integers(len(choices))]))
    return sorted(positions)


def _parts(sentences: list[list[str]], positions: list[int], tags: list[str], language: str):
    units = [u for s in sentences for u in s]
    joiner = "" if language == "zh" else " "
    parts, start = [], 0
    for position, tag in zip(positions, tags):
        if position > start:
            parts.append(("speech", joiner.join(units[start:position])))
        parts.append(("tag", tag))
        start = position
    if start < len(units):
        parts.append(("speech", joiner.join(units[start:])))
    return tuple(parts)


def plan_clip(
    rng: np.random.Generator, index: int, voice: str, language: str, tags: list[str], seconds: float
) -> ClipPlan:
    """Script one clip of about ``seconds`` seconds carrying ``tags`` (in order)."""
    speech_seconds = max(seconds - EVENT_SECONDS * len(tags), 0.8)
    sentences = _sentences(rng, language, speech_seconds)
    positions = _tag_positions(rng, sentences, len(tags))
    return ClipPlan(index, voice, language, _parts(sentences, positions, tags[: len(positions)], language))
