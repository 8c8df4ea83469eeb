"""Keyword tokens for the full-text index: words, and Chinese segmented by jieba.

SQLite's FTS5 ``unicode61`` tokenizer splits on spaces and punctuation but treats a run of Chinese
characters as one token, so Chinese is segmented first (jieba's search mode, which also emits
the shorter words inside long ones) and the index stores space-separated tokens.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words so common that matching them says nothing; they only slow an OR query down.
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in is it its of on or that the "
    "this to was what when where which who why will with you your my me we our "
    "的 了 是 在 和 与 或 吗 呢 吧 啊 我 你 他 她 它 们 这 那 个 怎么 什么 如何 为什么 哪 有 没有 "
    "就 也 都 而 及 把 被 让 给 对 从 到".split()
)


@functools.cache
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def keyword_tokens(text: str) -> list[str]:
    """Lower-cased words and Chinese words of ``text``, in order."""
    tokens: list[str] = []
    position = 0
    for match in _CJK_RUN.finditer(text):
        tokens.extend(_WORD.findall(text[position : match.start()].lower()))
        tokens.extend(w for w in _jieba().cut_for_search(match.group()) if w.strip())
        position = match.end()
    tokens.extend(_WORD.findall(text[position:].lower()))
    return tokens


def content_words(text: str) -> list[str]:
    """Keyword tokens of ``text`` without stopwords."""
    return [w for w in keyword_tokens(text) if w not in _STOPWORDS]


def index_text(text: str) -> str:
    """What the full-text index stores for a chunk."""
    return " ".join(keyword_tokens(text))


def query_terms(text: str) -> list[str]:
    """The distinct meaningful words of a query, in order."""
    return list(dict.fromkeys(content_words(text)))


def any_of(terms: list[str]) -> str:
    """An FTS5 query matching any of ``terms`` (each quoted: no FTS5 syntax gets through)."""
    return " OR ".join(quoted(t) for t in terms)


def quoted(term: str) -> str:
    """One term as an FTS5 string."""
    return '"' + term.replace('"', '""') + '"'
