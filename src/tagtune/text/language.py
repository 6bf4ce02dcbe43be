"""Which language a line of text is in, as far as tagtune's two languages go: Chinese or English.

A line with any CJK unified ideograph is Chinese (the official frontend also switches to its Chinese
normaliser on the first Han character); anything else is English. Tags (``<giggles>``) are ASCII and
never change the answer.
"""

from __future__ import annotations

import re

CHINESE, ENGLISH = "zh", "en"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def text_language(text: str) -> str:
    """``"zh"`` when ``text`` holds a Han character, else ``"en"``."""
    return CHINESE if _HAN.search(text or "") else ENGLISH
