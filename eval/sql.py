"""``kb eval sql``: execution accuracy of ``kb agent`` on questions with gold answers.

A question passes when the rows of the agent's last successful query contain the gold answer:
a number equal after rounding to 2 decimals, or a text equal case-insensitively (or whose words
all appear in one row, for answers such as a person's first and last name in two columns).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kb_assistant.chains.agent import AgentResult
from kb_assistant.eval.questions import Progress, each

RunAgent = Callable[[str], AgentResult]
_WORD = re.compile(r"\w+")


def matches(rows: list[list[Any]], answer: Any) -> bool:
    """Whether the gold answer is in the result rows (the first 50)."""
    numeric = isinstance(answer, int | float) and not isinstance(answer, bool)
    for row in rows[:50]:
        for value in row:
            if numeric and isinstance(value, int | float):
                if round(float(value), 2) == round(float(answer), 2):
                    return True
            elif not numeric and str(value).strip().casefold() == str(answer).strip().casefold():
                return True
        if not numeric:
            words = set(_WORD.findall(" ".join(str(v) for v in row).casefold()))
            wanted = set(_WORD.findall(str(answer).casefold()))
            if wanted and wanted <= words:
                return True
    return False


@dataclass
class SqlEval:
    """Execution accuracy, and one row per question."""

    scores: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def evaluate_sql(
    agent: RunAgent, questions: list[dict[str, Any]], progress: Progress | None = None
) -> SqlEval:
    """Ask each question (``id``, ``question``, ``answer``) through the agent."""
    rows = []
    for q in each(questions, progress):
        started = time.perf_counter()
        result = agent(str(q["question"]))
        rows.append({
            "id": str(q.get("id", "")), "question": q["question"], "gold": q["answer"],
            "pass": matches(result.rows, q["answer"]), "steps": len(result.steps),
            "seconds": round(time.perf_counter() - started, 2),
            "sql": result.sql[-1] if result.sql else "", "got": result.rows[:1],
            "stopped": result.stopped, "mode": result.mode,
            "repaired": any("first_sql" in s.input for s in result.steps),
            "answer": result.answer, "unsupported": len(result.unsupported),
        })  # fmt: skip
    passed = sum(r["pass"] for r in rows)
    scores = {
        "questions": len(rows), "passed": passed,
        "execution_accuracy": round(passed / len(rows), 4) if rows else 0.0,
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "repaired": sum(r["repaired"] for r in rows),
        "answers_flagged": sum(r["unsupported"] > 0 for r in rows),
    }  # fmt: skip
    return SqlEval(scores, rows)
