"""Retrieval scoring, the same rule as ../shared/eval/score_retrieval.py.

A retrieved chunk is a hit when at least half of its token 4-grams occur in the gold section, or
it holds at least half of the gold section's 4-grams (short sections). A token is a run of
letters/digits, except that each Chinese/Japanese ideograph is a token of its own: Chinese,
written without spaces, is scored by character 4-grams, and text without CJK exactly as by word
4-grams. The rule does not depend on how the documents were chunked, so runs of different
pipelines compare.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+", re.UNICODE)


def grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    """The token n-grams of ``text`` (a short text is one gram)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def is_hit(chunk: str, gold: set[tuple[str, ...]]) -> bool:
    """Whether a retrieved chunk comes from the gold section (given as its grams)."""
    found = grams(chunk)
    if not found or not gold:
        return False
    shared = len(found & gold)
    return shared / len(found) >= 0.5 or shared / len(gold) >= 0.5


def first_hit(retrieved: Sequence[str], gold: set[tuple[str, ...]], depth: int = 10) -> int | None:
    """The 1-based rank of the first hit among the top ``depth``, or None."""
    for rank, chunk in enumerate(retrieved[:depth], start=1):
        if is_hit(chunk, gold):
            return rank
    return None


def summarize(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1, recall@5 and MRR@10 over first-hit ranks, rounded as the shared scorer does."""
    n = max(1, len(ranks))
    found = [r for r in ranks if r is not None]
    return {
        "recall@1": round(sum(r == 1 for r in found) / n, 4),
        "recall@5": round(sum(r <= 5 for r in found) / n, 4),
        "mrr@10": round(sum(1.0 / r for r in found) / n, 4),
    }


def recall_curve(ranks: Sequence[int | None], depth: int = 10) -> list[float]:
    """recall@k for k = 1..depth."""
    n = max(1, len(ranks))
    return [sum(r is not None and r <= k for r in ranks) / n for k in range(1, depth + 1)]
