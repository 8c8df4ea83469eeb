"""Which language a question is in (answers follow it)."""

from __future__ import annotations

import re

from kb_assistant.prompts import Language

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def detect_language(text: str) -> Language:
    """'zh' when at least a fifth of the letters are Chinese characters, else 'en'."""
    letters = len(_LETTER.findall(text))
    return "zh" if letters and len(_CJK.findall(text)) / letters >= 0.2 else "en"
