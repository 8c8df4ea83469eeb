"""The ``kb`` command: a thin client of ``assistant.Assistant``.

Exit codes: 0 success; 1 an error (message on stderr, and ``{"error": ...}`` on stdout with
``--json``); 2 a usage error; 3 ``ingest`` finished but some files failed; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from assistant import Assistant
    from ingest import IngestProgress, IngestReport

EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
kb_option = click.option(
    "--kb", "kb_name", metavar="NAME", help="Knowledge base (default: the 'kb' setting)."
)


class Context:
    """What every command gets: the options of ``kb`` itself and a lazily built Assistant."""

    def __init__(self, home: Path | None, verbose: int) -> None:
        self.home = home
        self.verbose = verbose
        self.overrides: dict[str, Any] = {}
        self._assistant: Assistant | None = None

    def settings(self) -> Any:
        from settings import load_settings

        return load_settings(self.home, **self.overrides)

    def assistant(self) -> Assistant:
        if self._assistant is None:
            from assistant import build_assistant

            settings = self.settings()
            level = "DEBUG" if self.verbose > 1 else "INFO" if self.verbose else settings.log_level
            logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
            self._assistant = build_assistant(settings)
        return self._assistant


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        human()


@contextmanager
def reported(as_json: bool) -> Iterator[None]:
    """Turn kb-assistant's errors into a message and exit code 1 (the one edge that prints)."""
    from errors import KBError

    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            "interrupted: documents finished before the interruption are kept; "
            "run the same command again to continue",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except KBError as exc:
        if as_json:
            click.echo(
                json.dumps({"error": str(exc), "type": type(exc).__name__}, ensure_ascii=False)
            )
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)


_MODEL_OPTIONS = (
    click.option("--model", "chat_model", metavar="GGUF", help="Chat model (default: SmolLM2)."),
    click.option("--n-gpu-layers", type=int, help="Layers on the GPU: 0 CPU, -1 all."),
    click.option("--ctx", "context_size", type=int, help="Largest context window, in tokens."),
    click.option(
        "--lora", "lora_path", type=click.Path(dir_okay=False, path_type=Path), help="LoRA adapter."
    ),
    click.option("--temperature", type=float, help="Sampling temperature."),
    click.option("--top-k", type=int, help="Top-k sampling."),
    click.option("--top-p", type=float, help="Top-p (nucleus) sampling."),
    click.option("--repeat-penalty", type=float, help="Repetition penalty."),
    click.option("--max-tokens", type=int, help="Longest answer, in tokens."),
    click.option("--seed", type=int, help="Sampling seed."),
)  # fmt: skip


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model options; their values override settings for this command."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx: Context = click.get_current_context().obj
        for name in ("chat_model", "n_gpu_layers", "context_size", "lora_path", "temperature",
                     "top_k", "top_p", "repeat_penalty", "max_tokens", "seed"):  # fmt: skip
            value = kwargs.pop(name)
            if value is not None:
                ctx.overrides[name] = value
        return command(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KB_HOME",
    help="Data directory (default: $KB_HOME or the user data folder).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: int) -> None:
    """kb-assistant: a private knowledge base on your own machine."""
    ctx.obj = Context(home, verbose)


# --- documents ----------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@kb_option
@json_option
@click.pass_obj
def ingest(ctx: Context, paths: tuple[Path, ...], kb_name: str | None, as_json: bool) -> None:
    """Ingest files and folders (recursively) into a knowledge base."""
    with reported(as_json):
        assistant = ctx.assistant()

        def waiting() -> None:
            click.echo("Another ingest is writing to this knowledge base; waiting...", err=True)

        with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
            report = assistant.ingest(paths, kb=kb_name, progress=progress, on_wait=waiting)
    emit(report.to_json(), as_json, lambda: _print_ingest(report))
    if report.failed:
        sys.exit(EXIT_PARTIAL)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[IngestProgress], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("Ingesting", total=None, chunks=0)

        def update(p: IngestProgress) -> None:
            name = Path(p.current).name if p.current else "Ingesting"
            bar.update(task, total=p.files_total, completed=p.files_done, chunks=p.chunks_done,
                       description=name[:40])  # fmt: skip

        yield update


def _print_ingest(report: IngestReport) -> None:
    click.echo(
        f"{len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.failed)} failed"
        + (f", {len(report.skipped)} skipped" if report.skipped else "")
        + f" — {report.chunks_added} chunks in {report.seconds:.1f} s"
        + f" (knowledge base '{report.kb}')"
    )
    for problem in report.failed:
        click.echo(f"  failed: {problem.path}: {problem.error}")
    if report.skipped:
        kinds = Counter(Path(p.path).suffix.lower() or "(no extension)" for p in report.skipped)
        listed = ", ".join(f"{ext} x{n}" if n > 1 else ext for ext, n in kinds.most_common())
        click.echo(f"  skipped (unsupported types inside folders): {listed}; --json lists them")


@main.command()
@kb_option
@json_option
@click.pass_obj
def docs(ctx: Context, kb_name: str | None, as_json: bool) -> None:
    """List the documents of a knowledge base."""
    with reported(as_json):
        records = ctx.assistant().documents(kb_name)
    rows: list[dict[str, Any]] = [
        {
            "doc_id": d.doc_id, "source": d.source, "name": d.name, "format": d.format,
            "pages": d.pages, "chunks": d.chunks, "sha256": d.sha256, "size": d.size,
            "added_at": d.added_at, "notes": d.notes,
        }
        for d in records
    ]  # fmt: skip

    def human() -> None:
        if not rows:
            click.echo("No documents yet; add some with 'kb ingest PATH'.")
        for r in rows:
            pages = "-" if r["pages"] is None else r["pages"]
            click.echo(
                f"{r['doc_id']:>5}  {r['name']}  pages {pages}  chunks {r['chunks']}  "
                f"{r['sha256'][:12]}  {r['added_at']}  {r['source']}"
            )

    emit(rows, as_json, human)


@main.command()
@click.argument("refs", nargs=-1, required=True, metavar="DOC...")
@kb_option
@json_option
@click.pass_obj
def remove(ctx: Context, refs: tuple[str, ...], kb_name: str | None, as_json: bool) -> None:
    """Remove documents (by id, source path or file name) with their chunks and vectors."""
    with reported(as_json):
        removed = ctx.assistant().remove(list(refs), kb=kb_name)
    data = [{"doc_id": d.doc_id, "source": d.source, "chunks": d.chunks} for d in removed]

    def human() -> None:
        for d in removed:
            click.echo(f"removed {d.doc_id}: {d.source} ({d.chunks} chunks)")

    emit(data, as_json, human)


@main.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 100), help="Results.")
@kb_option
@json_option
@click.pass_obj
def search(ctx: Context, query: str, k: int, kb_name: str | None, as_json: bool) -> None:
    """Show the chunks most similar to QUERY, with source, page and score."""
    with reported(as_json):
        hits = ctx.assistant().search(query, k=k, kb=kb_name)
    rows: list[dict[str, Any]] = [
        {
            "rank": h.rank, "text": h.chunk.text, "source": h.chunk.source, "page": h.chunk.page,
            "score": round(h.score, 4), "dense_score": _rounded(h.dense_score),
            "keyword_score": _rounded(h.keyword_score), "heading": h.chunk.heading,
            "sheet": h.chunk.sheet, "doc_id": h.chunk.doc_id, "chunk_id": h.chunk.chunk_id,
        }
        for h in hits
    ]  # fmt: skip

    def human() -> None:
        if not rows:
            click.echo("No results: the knowledge base is empty.")
        for r in rows:
            where = Path(r["source"]).name + (f" p.{r['page']}" if r["page"] else "")
            where += f" [{r['sheet']}]" if r["sheet"] else ""
            parts = [f"fused {r['score']:.4f}"]
            parts += [f"dense {r['dense_score']:.3f}"] if r["dense_score"] is not None else []
            parts += [f"keyword {r['keyword_score']:.2f}"] if r["keyword_score"] is not None else []
            click.echo(
                f"[{r['rank']}] {where}  ({', '.join(parts)})"
                + (f"  § {r['heading']}" if r["heading"] else "")
            )
            snippet = " ".join(r["text"].split())
            click.echo(f"    {snippet[:300]}{'…' if len(snippet) > 300 else ''}")

    emit(rows, as_json, human)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- answers ------------------------------------------------------------------------------


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
        answer = ctx.assistant().ask(question, kb=kb_name, on_token=stream, on_wait=_waiting)
    if as_json:
        emit(answer.to_json(), True, lambda: None)
    else:
        click.echo()
        _print_sources(answer)


def _echo_stream(piece: str) -> None:
    click.echo(piece, nl=False)


def _print_sources(answer: Any) -> None:
    if answer.refused or not answer.sources:
        return
    if answer.citations:
        click.echo("\nSources:")
    else:
        click.echo("\nThe answer cites no source; the passages it was given:")
    for c in answer.citations or answer.sources:
        where = (
            c.name
            + (f", page {c.page}" if c.page else "")
            + (f", sheet {c.sheet}" if c.sheet else "")
        )
        where += f" — {c.heading}" if c.heading else ""
        note = " (not cited inline; its words are in the answer)" if c.inferred else ""
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
    from chains.agent import AgentStep, rows_text

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
    click.echo(result.answer)
    for sql in result.sql:
        click.echo(f"\nSQL: {sql}")
    if result.rows:
        lines = rows_text(result.columns, result.rows).splitlines()
        click.echo("Rows:\n" + "\n".join("  " + line for line in lines))
    for c in result.citations:
        where = c["source"] + (f", page {c['page']}" if c.get("page") else "")
        click.echo(f"  [{c['n']}] {where}")
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
            rows = [vars(s) for s in assistant.chats.sessions()]
            emit(rows, as_json, lambda: _print_sessions(rows))
            return
        if session_id:
            info = assistant.chats.get(session_id)
            session_id = info.session_id
            for turn in assistant.chats.turns(session_id):
                click.echo(f"you> {turn.question}\n{turn.answer}\n")
        else:
            session_id = assistant.new_session(kb_name)
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
                session_id = assistant.new_session(assistant.chats.get(session_id).kb)
            click.echo(f"Session {session_id}", err=True)
            continue
        if not question.strip():
            continue
        with reported(False):
            answer = assistant.ask(
                question, session=session_id, on_token=_echo_stream, on_wait=_waiting
            )
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
    """Check the chat model and the hardware: GPU offload, memory needed, threads."""
    from models.hardware import doctor_report

    with reported(as_json):
        report = doctor_report(ctx.settings())

    def human() -> None:
        for key, value in report.items():
            click.echo(f"{key.replace('_', ' ')}: {value}")

    emit(report, as_json, human)


# --- tables and databases -------------------------------------------------------------------


def _table_rows(infos: list[Any]) -> list[dict[str, Any]]:
    from vectorstore.tables import table_json

    return [table_json(i) for i in infos]


def _print_tables(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("No tables yet; add one with 'kb table add FILE.csv' or 'kb db connect URL'.")
    for r in rows:
        keys = set(r.get("primary_key") or [])
        refs = {
            f["column"]: f"{f['ref_table']}.{f['ref_column']}{'?' if f['inferred'] else ''}"
            for f in r.get("foreign_keys", [])
        }
        columns = ", ".join(
            f"{c['name']} {c['type']}{' PK' if c['name'] in keys else ''}"
            f"{' -> ' + refs[c['name']] if c['name'] in refs else ''}"
            for c in r["columns"]
        )
        note = " (truncated)" if r.get("truncated") else ""
        click.echo(f"{r['source']}.{r['name']}  {r['rows']} rows{note}  ({columns})")


@main.group("table")
def table_group() -> None:
    """Add or drop tables (CSV, Excel) that questions and SQL can use."""


@table_group.command("add")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="Table name (default: from the file name; Excel adds the sheet).")
@kb_option
@json_option
@click.pass_obj
def table_add(
    ctx: Context, file: Path, name: str | None, kb_name: str | None, as_json: bool
) -> None:
    """Load FILE.csv or FILE.xlsx as table(s): header detected, types inferred."""
    with reported(as_json):
        rows = _table_rows(ctx.assistant().add_table(file, name=name, kb=kb_name))
    emit(rows, as_json, lambda: _print_tables(rows))


@table_group.command("drop")
@click.argument("name")
@kb_option
@json_option
@click.pass_obj
def table_drop(ctx: Context, name: str, kb_name: str | None, as_json: bool) -> None:
    """Remove table NAME (or disconnect database NAME)."""
    with reported(as_json):
        ctx.assistant().drop_table(name, kb=kb_name)
    emit({"dropped": name}, as_json, lambda: click.echo(f"dropped '{name}'"))


@main.group("db")
def db_group() -> None:
    """Connect databases that questions and SQL can use."""


@db_group.command("connect")
@click.argument("url")
@click.option("--name", required=True, help="Name to refer to the database by.")
@kb_option
@json_option
@click.pass_obj
def db_connect(ctx: Context, url: str, name: str, kb_name: str | None, as_json: bool) -> None:
    """Connect a database by URL (sqlite:///file.db or postgresql://user:pw@host/db); read-only."""
    with reported(as_json):
        rows = _table_rows(ctx.assistant().connect_database(url, name=name, kb=kb_name))
    emit(rows, as_json, lambda: _print_tables(rows))


@main.command("tables")
@kb_option
@json_option
@click.pass_obj
def tables_command(ctx: Context, kb_name: str | None, as_json: bool) -> None:
    """List tables and connected databases with their columns."""
    with reported(as_json):
        rows = _table_rows(ctx.assistant().tables(kb_name))
    emit(rows, as_json, lambda: _print_tables(rows))


@main.command("sql")
@click.argument("query")
@click.option("--db", "source", metavar="NAME", help="A connected database (default: the tables).")
@kb_option
@json_option
@click.pass_obj
def sql_command(
    ctx: Context, query: str, source: str | None, kb_name: str | None, as_json: bool
) -> None:
    """Run one read-only SELECT (checked, row-capped, time-limited)."""
    with reported(as_json):
        result = ctx.assistant().sql(query, source=source, kb=kb_name)
    data = {
        "sql": result.sql, "columns": result.columns, "rows": [list(r) for r in result.rows],
        "truncated": result.truncated, "seconds": round(result.seconds, 4),
    }  # fmt: skip

    def human() -> None:
        click.echo(f"-- {result.sql}")
        click.echo(" | ".join(result.columns))
        for row in result.rows:
            click.echo(" | ".join("" if v is None else str(v) for v in row))
        more = " (more rows were cut at the row cap)" if result.truncated else ""
        click.echo(f"({len(result.rows)} rows in {result.seconds:.2f} s{more})")

    emit(data, as_json, human)


# --- knowledge bases ----------------------------------------------------------------------


@main.command()
@json_option
@click.pass_obj
def kbs(ctx: Context, as_json: bool) -> None:
    """List knowledge bases."""
    with reported(as_json):
        summaries = ctx.assistant().list_kbs()
    rows: list[dict[str, Any]] = [
        {"name": s.name, "documents": s.documents, "chunks": s.chunks,
         "embedding_model": s.embedding_model, "created_at": s.created_at, "path": str(s.path)}
        for s in summaries
    ]  # fmt: skip

    def human() -> None:
        if not rows:
            click.echo("No knowledge bases yet; 'kb ingest PATH' creates 'default'.")
        for r in rows:
            click.echo(
                f"{r['name']}  {r['documents']} documents  {r['chunks']} chunks  "
                f"{r['embedding_model']}"
            )

    emit(rows, as_json, human)


@main.group("kb")
def kb_group() -> None:
    """Create or delete a knowledge base."""


@kb_group.command("create")
@click.argument("name")
@json_option
@click.pass_obj
def kb_create(ctx: Context, name: str, as_json: bool) -> None:
    """Create an empty knowledge base NAME."""
    with reported(as_json):
        kb = ctx.assistant().create_kb(name)
    data = {"name": kb.name, "path": str(kb.folder), "embedding_model": kb.manifest.embedding_model}
    emit(data, as_json, lambda: click.echo(f"created knowledge base '{kb.name}' in {kb.folder}"))


@kb_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def kb_delete(ctx: Context, name: str, yes: bool, as_json: bool) -> None:
    """Delete knowledge base NAME and everything in it."""
    if not yes and not as_json:
        click.confirm(f"Delete knowledge base '{name}' and all its documents?", abort=True)
    elif as_json and not yes:
        raise click.UsageError("--json needs --yes to delete without asking")
    with reported(as_json):
        ctx.assistant().delete_kb(name)
    emit({"deleted": name}, as_json, lambda: click.echo(f"deleted knowledge base '{name}'"))


# --- settings and the app -----------------------------------------------------------------


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def config(click_ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings; 'kb config set/unset' change the config file."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    with reported(as_json):
        settings = ctx.settings()
    data = {k: _shown(v) for k, v in settings.model_dump().items()}
    data["config_file"] = str(settings.config_file)

    def human() -> None:
        for key, value in data.items():
            click.echo(f"{key} = {value!r}")
        click.echo("# change with 'kb config set NAME VALUE', KB_<NAME> environment variables, "
                   "or the config file above")  # fmt: skip

    emit(data, as_json, human)


def _shown(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "********"
    return str(value) if isinstance(value, Path) else value


@config.command("set")
@click.argument("name")
@click.argument("value")
@json_option
@click.pass_obj
def config_set(ctx: Context, name: str, value: str, as_json: bool) -> None:
    """Save one setting in the config file (validated first; the app uses it on its next run)."""
    from settings import save_settings

    with reported(as_json):
        settings = save_settings(ctx.settings().home, {name: _parse_value(value)})
    shown = _shown(getattr(settings, name))
    emit({name: shown}, as_json, lambda: click.echo(f"{name} = {shown!r} (saved)"))


@config.command("unset")
@click.argument("name")
@json_option
@click.pass_obj
def config_unset(ctx: Context, name: str, as_json: bool) -> None:
    """Remove one setting from the config file (its default applies again)."""
    from settings import save_settings

    with reported(as_json):
        settings = save_settings(ctx.settings().home, {}, remove=[name])
    shown = _shown(getattr(settings, name))
    emit({name: shown}, as_json, lambda: click.echo(f"{name} = {shown!r} (default)"))


def _parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, true/false), else the string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@main.command()
@click.option("--port", default=8501, show_default=True, help="Port to listen on.")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback publishes your documents to the network "
    "and needs the app_password setting.",
)
@click.pass_obj
def app(ctx: Context, port: int, address: str) -> None:
    """Start the Streamlit app in the browser (listens on 127.0.0.1 unless told otherwise)."""
    import os
    import subprocess

    with reported(False):
        settings = ctx.settings()
    if address not in _LOOPBACK and settings.app_password is None:
        raise click.UsageError(
            f"listening on {address} would let anyone on the network read your documents; "
            "set a password first ('kb config set app_password ...' or KB_APP_PASSWORD)"
        )
    script = Path(__file__).with_name("app.py")
    env = dict(os.environ)
    if ctx.home is not None:
        env["KB_HOME"] = str(ctx.home)
    command = [
        sys.executable, "-m", "streamlit", "run", str(script), "--server.address", address,
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    sys.exit(subprocess.call(command, env=env, cwd=script.parent))


if __name__ == "__main__":
    main()
