"""``kb eval answers``: answer correctness, abstention and citation correctness of ``kb ask``.

Answerable questions carry the gold section (``gold_text``) and, in answer sets, gold answer
facts: an answer is *correct* when it holds every string of ``all`` and one of ``any``
(case-insensitive) and is not a refusal. Off-topic questions carry only a question.
For each answer: did it abstain; which passages did it cite (inline ``[n]`` marks, and the
passages the citation check attributes uncited sentences to); is each cited passage from the
gold section (the retrieval rule of ``scoring.is_hit``); was any gold passage in the prompt at
all (the most a citation could get right).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kb_assistant.chains.rag import Answer
from kb_assistant.errors import KBError
from kb_assistant.eval.questions import Progress, each
from kb_assistant.eval.scoring import grams, is_hit

Ask = Callable[[str], Answer]


@dataclass
class AnswersEval:
    """Rates over the two sets, and one row per question."""

    scores: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def gold_facts(record: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """A record's ``(all, any)`` answer facts; None when it has neither.

    Raises:
        KBError: a field that is not a list of strings, or both lists empty.
    """
    if "all" not in record and "any" not in record:
        return None
    facts = []
    for key in ("all", "any"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise KBError(
                f"question {record.get('id', record['question'])!r}: '{key}' must be a list of "
                "non-empty strings"
            )
        facts.append(value)
    if not facts[0] and not facts[1]:
        raise KBError(f"question {record.get('id', record['question'])!r}: 'all' and 'any' are "
                      "both empty")  # fmt: skip
    return facts[0], facts[1]


def is_correct(text: str, facts: tuple[list[str], list[str]]) -> bool:
    """Whether an answer holds every ``all`` fact and one ``any`` fact (case-insensitive, and
    ignoring spaces: Chinese text spaces Latin words and digits, or not: 级别是 2, 级别是2)."""
    lowered = text.lower()
    squeezed = "".join(lowered.split())

    def holds(fact: str) -> bool:
        return fact.lower() in lowered or "".join(fact.lower().split()) in squeezed

    every, one_of = facts
    return all(holds(f) for f in every) and (not one_of or any(holds(f) for f in one_of))


def _row(q: dict[str, Any], answer: Answer, seconds: float, answerable: bool) -> dict[str, Any]:
    gold = grams(str(q.get("gold_text", ""))) if answerable else set()
    facts = gold_facts(q) if answerable else None
    correct = None if facts is None else (not answer.refused and is_correct(answer.answer, facts))
    inline = [is_hit(c.text, gold) for c in answer.citations if not c.inferred]
    inferred = [is_hit(c.text, gold) for c in answer.citations if c.inferred]
    trace = answer.trace
    return {
        "id": str(q.get("id", "")), "question": q["question"], "answerable": answerable,
        "refused": answer.refused, "answer": answer.answer, "correct": correct,
        "flagged": bool(answer.unsupported),
        "unsupported": [c.text for c in answer.unsupported],
        "sentences": [c.to_json() for c in answer.sentences],
        "passages": [p.get("text", "") for p in answer.trace.get("passages", [])],
        "language": answer.language,
        "citations": len(inline) + len(inferred),
        "correct_citations": sum(inline) + sum(inferred),
        "inline_citations": len(inline), "correct_inline": sum(inline),
        "gold_in_prompt": any(is_hit(s.text, gold) for s in answer.passages),
        "sources_listed": len(answer.passages) + len(answer.citations) if answer.refused else 0,
        "dense": trace.get("evidence", {}).get("dense"),
        "ttft_s": trace.get("time_to_first_token_s"), "seconds": round(seconds, 2),
    }  # fmt: skip


def evaluate_answers(
    ask: Ask, answerable: list[dict[str, Any]], offtopic: list[dict[str, Any]],
    progress: Progress | None = None,
) -> AnswersEval:  # fmt: skip
    """Ask every question; score abstention on both sets and citations on the answerable."""
    tagged = [(q, True) for q in answerable] + [(q, False) for q in offtopic]
    rows = []
    for q, is_answerable in each(tagged, progress):
        started = time.perf_counter()
        answer = ask(str(q["question"]))
        rows.append(_row(q, answer, time.perf_counter() - started, is_answerable))
    return AnswersEval(score(rows), rows)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary figures of a set of answer rows."""
    ans = [r for r in rows if r["answerable"]]
    off = [r for r in rows if not r["answerable"]]
    answered = [r for r in ans if not r["refused"]]
    graded = [r for r in ans if r["correct"] is not None]
    ttfts = sorted(r["ttft_s"] for r in rows if r["ttft_s"] is not None)
    citations = sum(r["citations"] for r in answered)
    correct = sum(r["correct_citations"] for r in answered)
    inline = sum(r["inline_citations"] for r in answered)
    return {
        "answerable": len(ans), "offtopic": len(off),
        "correctness": _rate(sum(bool(r["correct"]) for r in graded), len(graded)),
        "graded": len(graded),
        "wrong_answers": sum(r["correct"] is False and not r["refused"] for r in graded),
        # The sentence check: of the wrong answers, how many it flags (should be high); of
        # the correct ones, how many it flags anyway (should be low).
        "wrong_flagged": _rate(sum(r["flagged"] for r in graded if r["correct"] is False
                                   and not r["refused"]),
                               sum(r["correct"] is False and not r["refused"] for r in graded)),
        "correct_flagged": _rate(sum(r["flagged"] for r in graded if r["correct"]),
                                 sum(bool(r["correct"]) for r in graded)),
        "false_abstention": _rate(sum(r["refused"] for r in ans), len(ans)),
        "offtopic_abstention": _rate(sum(r["refused"] for r in off), len(off)),
        "abstained_with_sources": sum(r["refused"] and r["sources_listed"] > 0 for r in rows),
        "answers_with_citation": _rate(sum(r["citations"] > 0 for r in answered), len(answered)),
        "citation_precision": _rate(correct, citations),
        "answers_citing_inline": _rate(sum(r["inline_citations"] > 0 for r in answered),
                                       len(answered)),
        "inline_citation_precision": _rate(sum(r["correct_inline"] for r in answered), inline),
        "answers_citing_gold": _rate(sum(r["correct_citations"] > 0 for r in answered),
                                     len(answered)),
        "gold_in_prompt": _rate(sum(r["gold_in_prompt"] for r in answered), len(answered)),
        "median_seconds": sorted(r["seconds"] for r in rows)[len(rows) // 2] if rows else None,
        "median_ttft_s": ttfts[len(ttfts) // 2] if ttfts else None,
        "p95_ttft_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] if ttfts else None,
    }  # fmt: skip
