"""The judged prompt suite: lines with tags at the start, middle and end, and untagged controls.

A suite file holds one prompt per line (``#`` starts a comment line). The shipped suite is
``assets/prompts/judges-en.txt`` and ``judges-zh.txt``; ``--prompts FILE`` replaces it. Each tagged line is
spoken twice, as written and with its tags removed (its tag-free twin), so WER / CER and speaker similarity
compare the two; a tag's event is expected at the tag's place in the text, scaled to the clip's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagtune.evaluate.judges.base import Expected
from tagtune.evaluate.judges.text import language_of, remove_tags
from tagtune.evaluate.loading import EvaluationError
from tagtune.folders import shipped_prompts
from tagtune.tags.vocab import TagSet, UnknownTagError, find_tags


@dataclass
class SuitePrompt:
    """One line of the suite."""

    text: str  # as written, tags included
    language: str  # "en" or "zh"
    tags: list[tuple[str, float]]  # (canonical tag, where it stands as a fraction of the tag-free text)

    @property
    def plain(self) -> str:
        """The line with its tags removed: its tag-free twin, and the reference of WER / CER."""
        return " ".join(remove_tags(self.text).split())

    def expected(self, seconds: float) -> list[Expected]:
        """Where each tag's event should start in a clip of ``seconds``."""
        return [Expected(tag, fraction * seconds) for tag, fraction in self.tags]


def _positions(text: str) -> list[tuple[str, float]]:
    """(tag as written, fraction of the tag-free characters before it) for each tag in ``text``."""
    out, before, last = [], 0, 0
    plain_len = len("".join(remove_tags(text).split()))
    for m in find_tags(text):
        before += len("".join(text[last : m.start].split()))
        out.append((m.raw, before / plain_len if plain_len else 0.0))
        last = m.end
    return out


def read_prompts(paths: list[str | Path] | None = None) -> list[SuitePrompt]:
    """The prompts of the suite files (the shipped suite when ``paths`` is None); tags as written."""
    prompts = []
    for path in paths or shipped_prompts():
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise EvaluationError(f"{path}: cannot read the prompt file ({e})", params=("prompts",)) from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                prompts.append(SuitePrompt(line, language_of(line), _positions(line)))
    if not prompts:
        raise EvaluationError(f"{', '.join(map(str, paths or []))}: no prompt lines", params=("prompts",))
    return prompts


def for_tags(prompts: list[SuitePrompt], tagset: TagSet) -> tuple[list[SuitePrompt], int]:
    """The prompts whose tags the model knows (tags in canonical spelling) and how many were left out."""
    kept, left_out = [], 0
    for p in prompts:
        try:
            tags = [(tagset.resolve(raw), fraction) for raw, fraction in p.tags]
        except UnknownTagError:
            left_out += 1
            continue
        kept.append(SuitePrompt(p.text, p.language, [(t, f) for t, f in tags if t is not None]))
    return kept, left_out
