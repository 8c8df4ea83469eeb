"""``kb eval retrieval|answers|sql``: measured quality, written up as a report with plots."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from kb_assistant.cli.base import (
    Context,
    emit,
    json_option,
    kb_option,
    main,
    model_options,
    progress_bar,
    reported,
)

_out_option = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the report (default: <home>/eval/<kind>-<time>).",
)  # fmt: skip
_file = click.Path(dir_okay=False, path_type=Path)


@main.group("eval")
def eval_group() -> None:
    """Measure retrieval, answers and SQL on question sets; writes a report with plots."""


@contextmanager
def counting(enabled: bool, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar with ETA on stderr (when it is a terminal) for a run over questions."""
    if not enabled:
        yield None
        return
    with progress_bar() as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _folder(ctx: Context, out: Path | None, kind: str) -> Path:
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = ctx.assistant().settings.home / "eval" / f"{kind}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(report: Path, scores: dict[str, Any], as_json: bool) -> None:
    def human() -> None:
        for key, value in scores.items():
            click.echo(f"{key}: {value}")
        click.echo(f"report: {report}")

    emit({**scores, "report": str(report)}, as_json, human)


@eval_group.command("retrieval")
@click.argument("qa", type=_file)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(10, 100),
              help="Passages retrieved per question (scored to 10).")  # fmt: skip
@kb_option
@_out_option
@json_option
@click.pass_obj
def eval_retrieval(
    ctx: Context, *, qa: Path, k: int, kb_name: str | None, out: Path | None, as_json: bool
) -> None:
    """Recall@1, recall@5 and MRR@10 of the questions in QA (JSONL: id, question, gold_text).

    Writes the run file (run.jsonl, as ../shared/eval/score_retrieval.py reads it), report.md
    and plots.
    """
    from kb_assistant.eval import report as r
    from kb_assistant.eval.questions import read_questions
    from kb_assistant.eval.retrieval import evaluate_retrieval

    with reported(as_json):
        questions = read_questions(qa, ("id", "question", "gold_text"))
        assistant = ctx.assistant()
        base = assistant.knowledge_base(kb_name)
        with counting(not as_json and sys.stderr.isatty(), "Searching") as progress:
            result = evaluate_retrieval(
                lambda q, n: assistant.search(q, k=n, kb=base.name), questions, k=k,
                progress=progress,
            )  # fmt: skip
        folder = _folder(ctx, out, "retrieval")
        with (folder / "run.jsonl").open("w", encoding="utf-8") as fh:
            for line in result.run_lines():
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        s = assistant.settings
        plots = [r.plot_recall(result.ranks, folder / "recall_at_k.png"),
                 r.plot_first_hit(result.ranks, folder / "first_hit.png"),
                 r.plot_latency(result.latencies_ms, folder / "latency.png")]  # fmt: skip
        intro = [
            f"Questions: `{qa}` ({len(questions)}); knowledge base `{base.name}` "
            f"({base.catalog.chunk_count()} chunks); retrieval {s.retrieval_mode}, "
            f"keyword weight {s.keyword_weight}, embeddings {s.embedding_backend}.",
            "A passage is a hit when half its word 4-grams come from the gold section (or it "
            "holds half of the section's). Run file: `run.jsonl`.",
        ]
        details = (["id", "question", "first hit", "ms", "top passage"],
                   [(x["id"], x["question"], x["first_hit"], round(x["ms"], 1), x["top"])
                    for x in result.rows])  # fmt: skip
        report = r.write_report(folder, "Retrieval evaluation", intro, result.scores,
                                details=details, plots=plots)  # fmt: skip
    _finish(report, result.scores, as_json)


@eval_group.command("answers")
@click.argument("qa", type=_file)
@click.option(
    "--offtopic",
    type=_file,
    help="Off-topic questions (default: the shipped set in the questions' language).",
)
@click.option("--limit", type=click.IntRange(1), help="Ask at most this many of each set.")
@kb_option
@_out_option
@json_option
@model_options
@click.pass_obj
def eval_answers(
    ctx: Context, *, qa: Path, offtopic: Path | None, limit: int | None, kb_name: str | None,
    out: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Answer correctness, abstention and citations on QA and on off-topic questions.

    QA holds answerable questions (JSONL: id, question, gold_text, and for answer correctness
    'all' and/or 'any': facts a correct answer contains, e.g. eval/answers.en.jsonl);
    off-topic questions should be abstained from. Each question is answered by the chat
    model, as 'kb ask' does.
    """
    from kb_assistant import eval as package
    from kb_assistant.eval import report as r
    from kb_assistant.eval.answers import evaluate_answers
    from kb_assistant.eval.questions import read_questions

    with reported(as_json):
        answerable = read_questions(qa, ("question", "gold_text"))[:limit]
        from kb_assistant.chains.language import detect_language

        language = detect_language(" ".join(q["question"] for q in answerable[:20]))
        default = Path(package.__file__).with_name(f"offtopic.{language}.jsonl")
        off = read_questions(offtopic or default, ("question",))[:limit]
        assistant = ctx.assistant()
        base = assistant.knowledge_base(kb_name)
        with counting(not as_json and sys.stderr.isatty(), "Answering") as progress:
            result = evaluate_answers(lambda q: assistant.ask(q, kb=base.name), answerable, off,
                                      progress)  # fmt: skip
        folder = _folder(ctx, out, "answers")
        with (folder / "answers.jsonl").open("w", encoding="utf-8") as rows_file:
            for row in result.rows:
                rows_file.write(json.dumps(row, ensure_ascii=False) + "\n")
        s = assistant.settings
        plots = [r.plot_correctness(result.rows, folder / "correctness.png"),
                 r.plot_abstention(result.scores, folder / "abstention.png"),
                 r.plot_evidence(result.rows, assistant.rag_chain(base.name).params.min_dense,
                                 folder / "evidence.png"),
                 r.plot_citations(result.rows, folder / "citations.png")]  # fmt: skip
        intro = [
            f"Answerable: `{qa}` ({len(answerable)}); off-topic: `{offtopic or default}` "
            f"({len(off)}); knowledge base `{base.name}`; model `{s.chat_model or 'embedded'}`.",
            "An answer is correct when it holds every 'all' fact and one 'any' fact of its "
            "question and is not a refusal. "
            "A citation is correct when the passage it cites comes from the question's gold "
            "section (the retrieval hit rule). 'gold_in_prompt': answers whose prompt held a "
            "gold passage at all.",
        ]
        details = (["id", "answerable", "correct", "abstained", "flagged", "citations",
                    "cited gold", "cosine", "ttft s", "s", "answer"],
                   [(x["id"], x["answerable"], x["correct"], x["refused"], x["flagged"],
                     x["citations"], x["correct_citations"], x["dense"], x["ttft_s"],
                     x["seconds"], x["answer"][:160]) for x in result.rows])  # fmt: skip
        report = r.write_report(folder, "Answer evaluation", intro, result.scores,
                                details=details, plots=plots)  # fmt: skip
    _finish(report, result.scores, as_json)


@eval_group.command("sql")
@click.argument("questions_file", metavar="QUESTIONS", type=_file)
@click.option("--database", metavar="URL", help="Connect this database for the run only.")
@kb_option
@_out_option
@json_option
@model_options
@click.pass_obj
def eval_sql(
    ctx: Context, *, questions_file: Path, database: str | None, kb_name: str | None,
    out: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Execution accuracy of 'kb agent' on QUESTIONS (JSONL: id, question, answer).

    Uses the tables and databases of the knowledge base, or, with --database, that database
    alone in a scratch knowledge base removed afterwards.
    """
    from kb_assistant.eval import report as r
    from kb_assistant.eval.questions import read_questions
    from kb_assistant.eval.sql import evaluate_sql

    with reported(as_json):
        questions = read_questions(questions_file, ("question", "answer"))
        assistant = ctx.assistant()
        scratch = None
        if database:
            scratch = f"eval-sql-{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}"
            assistant.create_kb(scratch)
        try:
            name = scratch or assistant.knowledge_base(kb_name).name
            if database:
                assistant.connect_database(database, name="db", kb=name)
            with counting(not as_json and sys.stderr.isatty(), "Querying") as progress:
                result = evaluate_sql(lambda q: assistant.agent(q, kb=name), questions, progress)
        finally:
            if scratch:
                assistant.delete_kb(scratch)
        folder = _folder(ctx, out, "sql")
        plots = [r.plot_sql(result.rows, folder / "sql_results.png")]
        s = assistant.settings
        intro = [
            f"Questions: `{questions_file}` ({len(questions)}); "
            f"{'database `' + database + '`' if database else 'knowledge base `' + name + '`'}; "
            f"model `{s.chat_model or 'embedded'}`.",
            "A question passes when the rows of the agent's last successful query hold the gold "
            "answer (numbers equal after rounding to 2 decimals; texts case-insensitively).",
        ]
        details = (["id", "question", "pass", "steps", "repaired", "s", "SQL", "first row",
                    "answer"],
                   [(x["id"], x["question"], x["pass"], x["steps"], x["repaired"], x["seconds"],
                     f"`{x['sql']}`" if x["sql"] else "", x["got"][0] if x["got"] else "",
                     x["answer"][:120].replace("\n", " "))
                    for x in result.rows])  # fmt: skip
        report = r.write_report(folder, "SQL evaluation", intro, result.scores,
                                details=details, plots=plots)  # fmt: skip
    _finish(report, result.scores, as_json)
