"""``kb ingest``, ``docs``, ``remove``, ``search``, ``check``: documents in a knowledge base."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from kb_assistant.cli.base import (
    EXIT_PARTIAL,
    Context,
    emit,
    json_option,
    kb_option,
    main,
    progress_bar,
    reported,
)

if TYPE_CHECKING:
    from kb_assistant.ingest import IngestProgress, IngestReport


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@kb_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where files are read and embedded: this process, or a Ray cluster (needs "
                   "pip install 'kb-assistant[ray]'); this process writes either way.")  # fmt: skip
@click.option("--ray-address", metavar="ADDR",
              help="Ray cluster for --engine ray, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, "
                   "else a Ray started for this ingest on this machine).")  # fmt: skip
@json_option
@click.pass_obj
def ingest(
    ctx: Context, paths: tuple[Path, ...], *, kb_name: str | None,
    engine: Literal["local", "ray"], ray_address: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Ingest files and folders (recursively) into a knowledge base."""
    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address is for --engine ray")
    with reported(as_json):
        assistant = ctx.assistant()

        def waiting() -> None:
            click.echo("Another ingest is writing to this knowledge base; waiting...", err=True)

        with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
            report = assistant.ingest(paths, kb=kb_name, progress=progress, on_wait=waiting,
                                      engine=engine, ray_address=ray_address)  # fmt: skip
    emit(report.to_json(), as_json, lambda: _print_ingest(report))
    if report.failed:
        sys.exit(EXIT_PARTIAL)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[IngestProgress], None] | None]:
    if not enabled:
        yield None
        return
    with progress_bar("{task.fields[chunks]} chunks") as bar:
        task = bar.add_task("Ingesting", total=None, chunks=0)
        # A file read page by page (OCR) gets a bar of its own pages, with its own ETA.
        pages = bar.add_task("", total=None, chunks="", visible=False)
        reading = [""]

        def update(p: IngestProgress) -> None:
            name = Path(p.current).name if p.current else "Ingesting"
            name = "Building the search index" if p.indexing else name
            bar.update(task, total=p.files_total, completed=p.files_done, chunks=p.chunks_done,
                       description=name[:40])  # fmt: skip
            if p.pages_total:
                if reading[0] != p.current:  # a new file: its own rate and ETA
                    bar.reset(pages)
                    reading[0] = p.current or ""
                bar.update(pages, total=p.pages_total, completed=p.pages_done, visible=True,
                           description=f"  pages of {name}"[:40])  # fmt: skip
            elif p.current is None:
                bar.update(pages, visible=False)

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
@click.option("--embedding-model", "model", metavar="NAME",
              help="Model to move to: a name ('multilingual-e5-small', 'all-MiniLM-L6-v2') or a "
                   "model directory (default: the configured embedding_model).")  # fmt: skip
@json_option
@click.pass_obj
def reindex(ctx: Context, kb_name: str | None, model: str | None, as_json: bool) -> None:
    """Re-embed a knowledge base with another embedding model, without reading its files again.

    The new vectors are built beside the old ones; the knowledge base switches to them only
    when all are done, so it keeps answering meanwhile and a stopped reindex changes nothing.
    """
    with reported(as_json):
        assistant = ctx.assistant()

        def waiting() -> None:
            click.echo("Another process is writing to this knowledge base; waiting...", err=True)

        enabled = not as_json and sys.stderr.isatty()
        with progress_bar() if enabled else contextlib.nullcontext() as bar:
            task = bar.add_task("Re-embedding", total=None) if bar else None

            def update(done: int, total: int) -> None:
                if bar is not None:
                    bar.update(task, completed=done, total=total)

            report = assistant.reindex(kb=kb_name, embedding_model=model, progress=update,
                                       on_wait=waiting)  # fmt: skip
    emit(report.to_json(), as_json, lambda: click.echo(
        f"knowledge base '{report.knowledge_base}': {report.chunks} chunks re-embedded with "
        f"{report.new_model} (was {report.old_model}) in {report.seconds:.1f} s"
    ))  # fmt: skip


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
            for note in r["notes"]:  # truncation, unreadable pages, OCR and its confidence
                click.echo(f"       {note}")

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
            "name": h.chunk.name, "boxes": [list(b) for b in h.chunk.boxes], "ocr": h.chunk.ocr,
            "graph": list(h.graph),
        }
        for h in hits
    ]  # fmt: skip

    def human() -> None:
        if not rows:
            click.echo("No results: the knowledge base is empty.")
        for r in rows:
            where = r["name"] + (f" p.{r['page']}" if r["page"] else "")
            where += f" [{r['sheet']}]" if r["sheet"] else ""
            parts = [f"fused {r['score']:.4f}"]
            parts += [f"dense {r['dense_score']:.3f}"] if r["dense_score"] is not None else []
            parts += [f"keyword {r['keyword_score']:.2f}"] if r["keyword_score"] is not None else []
            click.echo(
                f"[{r['rank']}] {where}  ({', '.join(parts)})"
                + (f"  § {r['heading']}" if r["heading"] else "")
            )
            for fact in r["graph"][:3]:
                click.echo(f"    graph: {fact}")
            snippet = " ".join(r["text"].split())
            click.echo(f"    {snippet[:300]}{'…' if len(snippet) > 300 else ''}")

    emit(rows, as_json, human)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@main.command()
@kb_option
@click.option("--repair", is_flag=True, help="Rebuild what can be rebuilt from the catalog.")
@json_option
@click.pass_obj
def check(ctx: Context, kb_name: str | None, repair: bool, as_json: bool) -> None:
    """Verify a knowledge base: manifest, catalog, vectors and keyword index agree.

    Exits 1 when a problem remains. Sources edited or deleted since they were ingested are
    listed but are not problems ('kb ingest' brings them up to date).
    """
    with reported(as_json):
        report = ctx.assistant().check_kb(kb_name, repair=repair)

    def human() -> None:
        vectors = "?" if report.vectors is None else report.vectors
        click.echo(
            f"knowledge base '{report.kb}': {report.documents} documents, {report.chunks} "
            f"chunks, {vectors} vectors"
        )
        for line in report.repaired:
            click.echo(f"  repaired: {line}")
        for line in report.problems:
            click.echo(f"  problem: {line}")
        for line in report.notes:
            click.echo(f"  note: {line}")
        for line in report.changed_sources:
            click.echo(f"  source: {line}")
        if report.ok:
            click.echo("ok")
        elif not repair:
            click.echo(f"'kb check --kb {report.kb} --repair' rebuilds what the catalog holds")

    emit(report.to_json(), as_json, human)
    if not report.ok:
        sys.exit(1)
