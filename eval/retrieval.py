"""``kb eval retrieval``: every question through the same search ``kb search`` runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kb_assistant.eval.questions import Progress, each
from kb_assistant.eval.scoring import first_hit, grams, recall_curve, summarize
from kb_assistant.vectorstore.knowledge_base import SearchHit

Search = Callable[[str, int], Sequence[SearchHit]]


@dataclass
class RetrievalEval:
    """Scores of one run, and the per-question rows behind them."""

    scores: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ranks(self) -> list[int | None]:
        """First-hit rank of each question (None: no hit in the top 10)."""
        return [r["first_hit"] for r in self.rows]

    @property
    def latencies_ms(self) -> list[float]:
        """Search time of each question."""
        return [r["ms"] for r in self.rows]

    def run_lines(self) -> list[dict[str, Any]]:
        """The run file's lines, as ../shared/eval/score_retrieval.py reads them."""
        return [{"id": r["id"], "retrieved": r["retrieved"]} for r in self.rows]


def evaluate_retrieval(
    search: Search, questions: list[dict[str, Any]], *, k: int = 10,
    progress: Progress | None = None,
) -> RetrievalEval:  # fmt: skip
    """Search each question (``id``, ``question``, ``gold_text``) and score the top ``k``."""
    if questions:  # loads the embedding model: a one-time cost, not a search's
        search(str(questions[0]["question"]), k)
    rows = []
    for q in each(questions, progress):
        started = time.perf_counter()
        hits = search(str(q["question"]), k)
        ms = 1000 * (time.perf_counter() - started)
        retrieved = [h.chunk.text for h in hits]
        rank = first_hit(retrieved, grams(str(q["gold_text"])))
        top = hits[0].chunk if hits else None
        rows.append({
            "id": str(q["id"]), "question": q["question"], "first_hit": rank, "ms": ms,
            "retrieved": retrieved,
            "top": None if top is None else f"{top.name}" + (f" p.{top.page}" if top.page else ""),
        })  # fmt: skip
    ranks = [r["first_hit"] for r in rows]
    latencies = sorted(r["ms"] for r in rows)
    scores: dict[str, float] = {**summarize(ranks), "questions": len(rows)}
    scores["recall@10"] = round(recall_curve(ranks)[-1], 4)
    scores["p50_ms"] = round(statistics.median(latencies), 1)
    scores["p95_ms"] = round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)
    return RetrievalEval(scores, rows)
