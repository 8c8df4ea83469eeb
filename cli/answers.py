"""``kb ask``, ``agent``, ``chat``, ``doctor``: answers from the chat model."""

from __future__ import annotations

import sys
from typing import Any

import click

from kb_assistant.cli.base import (
    EXIT_ERROR,
    Context,
    emit,
    json_option,
    kb_option,
    main,
    model_options,
    reported,
)
from kb_assistant.errors import KBError


def _waiting() -> None:
    click.echo("(waiting for the model: another question is being answered)", err=True)


@main.command()
@click.argument("question")
@kb_option
@json_option
@model_options
@click.pass_obj
def ask(ctx: Context, question: str, kb_name: str | None, as_json: bool) -> None:
    """Answer QUESTION from a knowledge base, citing sources as [1], [2]..."""
    with reported(as_json):
        stream = None if as_json else _echo_stream
        answer = ctx.assistant().ask(question, kb=kb_name, on_token=stream, on_wait=_waiting,
                                     on_passages=None if as_json else _reading)  # fmt: skip
    if as_json:
        emit(answer.to_json(), True, lambda: None)
    else:
        click.echo()
        _print_sources(answer)


def _reading(passages: list[Any]) -> None:
    if sys.stderr.isatty():
        names = ", ".join(dict.fromkeys(c.name for c in passages))
        click.echo(f"Reading {len(passages)} passage(s) from {names}…", err=True)


def _echo_stream(piece: str) -> None:
    click.echo(piece, nl=False)


def _print_sources(answer: Any) -> None:
    if answer.refused:
        if answer.passages:
            click.echo("\nThe model read these passages and found no answer in them:")
        for c in answer.passages:
            _print_passage(c, "")
        return
    if not answer.passages:
        return
    if answer.unsupported:
        click.echo("\nNot found in the sources (check before relying on it):")
        for check in answer.unsupported:
            missing = f"  [missing: {', '.join(check.missing)}]" if check.missing else ""
            click.echo(f"  ! {check.text}{missing}")
    cited = {c.n for c in answer.citations}
    if answer.citations:
        click.echo("\nSources:")
    else:
        click.echo("\nThe answer cites no source; the passages it was read from:")
    for c in answer.citations or answer.passages:
        note = " (not cited inline; its words are in the answer)" if c.inferred else ""
        _print_passage(c, note)
    read = [c for c in answer.passages if c.n not in cited] if answer.citations else []
    if read:
        click.echo("Also read, not cited:")
        for c in read:
            _print_passage(c, "")


def _print_passage(c: Any, note: str) -> None:
    where = (
        c.name + (f", page {c.page}" if c.page else "") + (f", sheet {c.sheet}" if c.sheet else "")
    )
    where += f" — {c.heading}" if c.heading else ""
    snippet = " ".join(c.text.split())
    click.echo(f"  [{c.n}] {where}{note}")
    click.echo(f"      {snippet[:160]}{'…' if len(snippet) > 160 else ''}")


@main.command()
@click.argument("question")
@kb_option
@json_option
@model_options
@click.pass_obj
def agent(ctx: Context, question: str, kb_name: str | None, as_json: bool) -> None:
    """Answer QUESTION with tools: document search, table listing and read-only SQL.

    The SQL that ran and the rows it returned are shown with the answer.
    """
    from kb_assistant.chains.agent import AgentStep
    from kb_assistant.chains.tools.toolbox import rows_text

    def step(s: AgentStep) -> None:
        shown = ", ".join(f"{k}={v!r}" for k, v in s.input.items())
        first = s.output.strip().splitlines()[0] if s.output.strip() else ""
        mark = "✗" if s.error else "→"
        click.echo(f"{mark} {s.tool}({shown})", err=True)
        if s.error:
            click.echo(f"  {first}", err=True)

    with reported(as_json):
        result = ctx.assistant().agent(question, kb=kb_name, on_step=None if as_json else step)
    if as_json:
        emit(result.to_json(), True, lambda: None)
        return
    click.echo(f"({result.mode})", err=True)
    click.echo(result.answer)
    if result.unsupported:
        click.echo("\nNot in the query's rows (check before relying on it):")
        for check in result.unsupported:
            click.echo(f"  ! {check.text}  [missing: {', '.join(check.missing)}]")
    for sql in result.sql:
        click.echo(f"\nSQL: {sql}")
    if result.rows:
        lines = rows_text(result.columns, result.rows).splitlines()
        click.echo("Rows:\n" + "\n".join("  " + line for line in lines))
    for c in result.citations:
        where = c.source + (f", page {c.page}" if c.page else "")
        click.echo(f"  [{c.n}] {where}")
    if result.stopped:
        click.echo(f"(stopped: {result.stopped})", err=True)


@main.command()
@kb_option
@click.option("--session", "session_id", metavar="ID", help="Resume a saved conversation.")
@click.option("--list", "list_only", is_flag=True, help="List saved conversations and exit.")
@json_option
@model_options
@click.pass_obj
def chat(
    ctx: Context, kb_name: str | None, session_id: str | None, list_only: bool, as_json: bool
) -> None:
    """A conversation with follow-up questions; saved, and resumable with --session."""
    with reported(as_json):
        assistant = ctx.assistant()
        if list_only:
            rows = [vars(s) for s in assistant.conversations.conversations()]
            emit(rows, as_json, lambda: _print_sessions(rows))
            return
        if session_id:
            info = assistant.conversations.get(session_id)
            session_id = info.session_id
            for turn in assistant.conversations.turns(session_id):
                click.echo(f"you> {turn.question}\n{turn.answer}\n")
        else:
            session_id = assistant.new_conversation(kb_name)
    click.echo(
        f"Session {session_id} — ask a question; /new starts another conversation, "
        "/exit or Ctrl-D leaves.", err=True,
    )  # fmt: skip
    while True:
        try:
            question = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.exceptions.Abort):
            break
        if question.strip() in {"/exit", "/quit"}:
            break
        if question.strip() == "/new":
            click.echo(f"Saved. Resume with: kb chat --session {session_id}", err=True)
            with reported(False):
                session_id = assistant.new_conversation(assistant.conversations.get(session_id).kb)
            click.echo(f"Session {session_id}", err=True)
            continue
        if not question.strip():
            continue
        try:
            answer = assistant.ask(
                question, conversation=session_id, on_token=_echo_stream, on_wait=_waiting
            )
        except KBError as exc:  # one question failed (a crashed model worker...): go on
            click.echo(f"\nerror: {exc}", err=True)
            continue
        click.echo()
        _print_sources(answer)
        click.echo()
    click.echo(f"Saved. Resume with: kb chat --session {session_id}", err=True)


def _print_sessions(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("No conversations yet; 'kb chat' starts one.")
    for r in rows:
        click.echo(
            f"{r['session_id']}  {r['updated_at']}  {r['kb']}  {r['turns']} turns  {r['title']}"
        )


@main.command()
@json_option
@model_options
@click.pass_obj
def doctor(ctx: Context, as_json: bool) -> None:
    """Check the chat model and the hardware: CPU and llama.cpp build, a one-token generation
    in the model's worker process, GPU offload, memory needed, threads. Exits 1 when the
    check fails (the message names the cause and the fix)."""
    from kb_assistant.models.hardware import doctor_report

    with reported(as_json):
        report = doctor_report(ctx.settings())

    def human() -> None:
        for key, value in report.items():
            click.echo(f"{key.replace('_', ' ')}: {_doctor_value(key, value)}")

    emit(report, as_json, human)
    if not report["generation_check"]["ok"]:
        sys.exit(EXIT_ERROR)


def _doctor_value(key: str, value: Any) -> str:
    if key == "cpu":
        return f"{value['name']} ({', '.join(value['features']) or 'features unknown'})"
    if key == "generation_check":
        if value["ok"] and "server" in value:
            return f"ok, one token in {value['seconds']} s from {value['server']}"
        if value["ok"]:
            extra = "on" if value["extra_buffer_types"] else "off"
            return f"ok, one token in {value['seconds']} s (extra buffer types {extra})"
        return f"FAILED: {value['error']}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)
