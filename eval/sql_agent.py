"""Execution accuracy of ``kb agent`` on questions with gold SQL and answers.

Two runs over the same knowledge base (the database connected as ``db``):

* ``gold``: a scripted model that calls ``run_sql`` with each question's gold SQL, natively,
  then answers. It isolates the tool machinery (agent loop, validation, read-only execution,
  result handling): it must score every question.
* ``embedded``: the default embedded GGUF through the slot-filling policy (routing + the
  grammar-constrained query form), with no question-specific rules.

A question passes by the rule of ``kb eval sql`` (``eval.sql.matches``). ``kb eval sql`` runs the
configured model alone; this script also runs the gold-SQL script, for the comparison.

Usage: python eval/sql_agent.py QUESTIONS.jsonl DATABASE.sqlite [--runs gold,embedded]
Prints a Markdown table per run (question, pass, steps, seconds, SQL) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(questions: list[dict[str, Any]], database: Path, mode: str) -> list[dict[str, Any]]:
    """Ask every question; one result per question."""
    from langchain_core.messages import AIMessage

    from kb_assistant.assistant import build_assistant
    from kb_assistant.chains.agent import AgentLimits, AgentTools, run_agent
    from kb_assistant.eval.sql import matches
    from kb_assistant.models.chat import ScriptedChatModel
    from kb_assistant.settings import Settings
    from kb_assistant.vectorstore.tables import TableRegistry

    home = Path(tempfile.mkdtemp(prefix="kb-eval-sql-"))
    settings = Settings(home=home, embedding_backend="fake")  # no documents: no embedding
    assistant = build_assistant(settings)
    assistant.connect_database(f"sqlite:///{database}", name="db")
    results = []
    for q in questions:
        started = time.perf_counter()
        if mode == "gold":
            script: list[str | AIMessage] = [
                AIMessage(content="", tool_calls=[
                    {"name": "run_sql", "args": {"sql": q["gold_sql"], "database": "db"},
                     "id": f"{q['id']}-sql"}]),
                AIMessage(content="See the rows above."),
            ]  # fmt: skip
            model = ScriptedChatModel(native_tools=True, responses=script)
            registry = TableRegistry(assistant.knowledge_base().folder)
            out = run_agent(q["question"], AgentTools(registry, None, AgentLimits()), model)
        else:
            out = assistant.agent(q["question"])
        results.append({
            "id": q["id"], "question": q["question"], "pass": matches(out.rows, q["answer"]),
            "steps": len(out.steps), "seconds": round(time.perf_counter() - started, 2),
            "sql": out.sql[-1] if out.sql else "", "answer": q["answer"],
            "got": out.rows[:1],
        })  # fmt: skip
    assistant.close()
    return results


def report(mode: str, results: list[dict[str, Any]]) -> str:
    """A Markdown table and a summary line."""
    lines = [f"### {mode}", "", "| id | question | pass | steps | s | SQL |"]
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        sql = r["sql"].replace("|", "\\|")
        lines.append(
            f"| {r['id']} | {r['question']} | {'yes' if r['pass'] else 'no'} | {r['steps']} | "
            f"{r['seconds']} | `{sql}` |"
        )
    passed = sum(r["pass"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    lines += ["", f"**{mode}: {passed}/{len(results)} ({passed / len(results):.0%}), "
              f"{seconds:.1f} s in all**", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Run the evaluation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("database", type=Path)
    parser.add_argument("--runs", default="gold,embedded")
    args = parser.parse_args()
    questions = [json.loads(line) for line in args.questions.open(encoding="utf-8")]
    for mode in args.runs.split(","):
        print(report(mode, run(questions, args.database.resolve(), mode)))


if __name__ == "__main__":
    main()
