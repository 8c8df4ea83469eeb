"""``kb graph``: build, inspect and export a knowledge base's knowledge graph."""

from __future__ import annotations

import sys
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
from kb_assistant.errors import KBError


@main.group("graph")
def graph_group() -> None:
    """Build a knowledge graph of the documents, look at it, export it."""


@graph_group.command("build")
@kb_option
@click.option(
    "--mode",
    type=click.Choice(["fast", "llm"]),
    default="fast",
    show_default=True,
    help="fast: NLP entities and co-occurrence, no chat model (minutes); llm: the chat model "
    "extracts entities and relations under a grammar and summarises communities (slow).",
)
@click.option("--glean", is_flag=True, help="llm mode: a second pass for what the first missed.")
@click.option("--dry-run", is_flag=True, help="Print what would be extracted, and an estimate.")
@click.option("--rebuild", is_flag=True, help="Start from nothing, extracting every chunk again.")
@json_option
@model_options
@click.pass_obj
def graph_build(
    ctx: Context,
    *,
    kb_name: str | None,
    mode: str,
    glean: bool,
    dry_run: bool,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Extract entities and relations from the chunks not yet in the graph (an interrupted or
    incremental build goes on where the last one stopped), then find communities."""
    with reported(as_json):
        if glean and mode != "llm":
            raise KBError("--glean is a second pass of the chat model: use it with --mode llm")
        builder = ctx.assistant().graph_builder(kb_name, mode=mode, glean=glean)  # type: ignore[arg-type]
        if dry_run:
            plan = builder.plan(rebuild=rebuild)
            emit(plan.to_json(), as_json, lambda: _print_plan(plan))
            return
        enabled = not as_json and sys.stderr.isatty()
        if enabled:
            with progress_bar() as bar:
                task = bar.add_task(f"Graph ({mode})", total=None)
                report = builder.build(
                    on_progress=lambda p: bar.update(task, total=p.total, completed=p.done),
                    rebuild=rebuild,
                )
        else:
            report = builder.build(rebuild=rebuild)
    emit(report.to_json(), as_json, lambda: _print_report(report))


def _print_plan(plan: Any) -> None:
    click.echo(
        f"{plan.method}: {plan.pending} of {plan.chunks_total} chunks to add to the graph"
        + (" (the graph was built another way: it is rebuilt)" if plan.rebuild else "")
        + (f", {plan.cached} from the cache" if plan.cached else "")
    )
    if plan.prompt_tokens:
        click.echo(
            f"  model tokens: about {plan.prompt_tokens:,} in prompts, "
            f"{plan.reply_tokens:,} in replies"
        )
    click.echo(f"  estimated time on this machine: {_duration(plan.seconds)}")


def _print_report(report: Any) -> None:
    stats = report.stats
    click.echo(
        f"{report.method}: {report.extracted} chunks extracted, {report.from_cache} from the "
        f"cache in {_duration(report.seconds)}"
        + (" (rebuilt from the start)" if report.rebuilt else "")
        + (f"; {report.failures} replies did not parse" if report.failures else "")
    )
    if stats is not None:
        click.echo(
            f"  {stats.entities} entities, {stats.relations} relations, "
            f"{stats.communities} communities ({report.summaries} summaries written); "
            f"{stats.chunks_done} of {stats.chunks_total} chunks in the graph"
        )
    if report.stopped:
        click.echo("  stopped: run the same command again to continue")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@graph_group.command("stats")
@kb_option
@json_option
@click.pass_obj
def graph_stats(ctx: Context, kb_name: str | None, as_json: bool) -> None:
    """Counts: entities by type, relations, mentions, communities, chunks in the graph."""
    with reported(as_json):
        stats = ctx.assistant().graph(kb_name).stats()

    def human() -> None:
        if stats.method is None:
            click.echo("No graph yet; build one with 'kb graph build' (--mode fast or llm).")
            return
        click.echo(
            f"{stats.method}: {stats.entities} entities, {stats.relations} relations, "
            f"{stats.mentions} mentions, {stats.communities} communities; "
            f"{stats.chunks_done} of {stats.chunks_total} chunks in the graph"
        )
        click.echo("  " + ", ".join(f"{k} {v}" for k, v in stats.types.items()))

    emit(stats.to_json(), as_json, human)


@graph_group.command("show")
@click.argument("entity")
@kb_option
@click.option(
    "--relations",
    "limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Most relations and passages listed.",
)
@json_option
@click.pass_obj
def graph_show(ctx: Context, entity: str, kb_name: str | None, limit: int, as_json: bool) -> None:
    """An entity (by name, alias or part of one): its description, relations and the passages
    that mention it."""
    with reported(as_json):
        assistant = ctx.assistant()
        store = assistant.graph(kb_name)
        found = store.search(entity, limit=1)
        if not found:
            raise KBError(
                f"no entity matching '{entity}' in the graph; 'kb graph stats' says whether "
                "there is one, and 'kb graph build' builds it"
            )
        data = entity_json(assistant, kb_name, found[0].entity_id, limit)
    emit(data, as_json, lambda: _print_entity(data))


def entity_json(assistant: Any, kb: str | None, entity_id: int, limit: int) -> dict[str, Any]:
    """An entity with its relations and mentioning passages, as JSON."""
    store = assistant.graph(kb)
    entity = store.entities([entity_id])[entity_id]
    chunk_ids = store.mention_chunks([entity_id])[entity_id]
    chunks = assistant.knowledge_base(kb).catalog.chunks_by_ids(chunk_ids[:limit])
    return {
        "id": entity.entity_id, "name": entity.name, "type": entity.type,
        "description": entity.description, "aliases": list(entity.aliases),
        "mentions": entity.mentions,
        "relations": [
            {"source": r.source_name, "relation": r.relation, "target": r.target_name,
             "description": r.description, "strength": r.strength, "chunks": list(r.chunks)}
            for r in store.relations([entity_id], limit=limit)
        ],
        "passages": [
            {"chunk_id": c.chunk_id, "source": c.source, "name": c.name, "page": c.page,
             "heading": c.heading, "text": c.text}
            for c in (chunks[i] for i in chunk_ids[:limit] if i in chunks)
        ],
    }  # fmt: skip


def _print_entity(data: dict[str, Any]) -> None:
    click.echo(f"{data['name']} ({data['type']}), in {data['mentions']} passage(s)")
    if data["aliases"]:
        click.echo("  also: " + ", ".join(data["aliases"]))
    if data["description"]:
        click.echo("  " + data["description"][:400])
    for r in data["relations"]:
        click.echo(
            f"  {r['source']} —{r['relation']}→ {r['target']}  ({len(r['chunks'])} passage(s))"
        )
    for p in data["passages"]:
        where = f", page {p['page']}" if p["page"] else ""
        click.echo(f"  [{p['chunk_id']}] {p['name']}{where}: {p['text'][:100]!r}")


@graph_group.command("export")
@kb_option
@click.option(
    "--format", "fmt", type=click.Choice(["graphml", "json"]), default="graphml", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File.")
@click.pass_obj
def graph_export(ctx: Context, kb_name: str | None, fmt: str, output: Path | None) -> None:
    """The whole graph as GraphML (Gephi, yEd, Neo4j) or node-link JSON (networkx, d3)."""
    from kb_assistant.vectorstore.files import atomic_write_bytes
    from kb_assistant.vectorstore.graph.export import export

    with reported(False):
        text = export(ctx.assistant().graph(kb_name), fmt)  # type: ignore[arg-type]
        if output is None:
            click.echo(text)
            return
        atomic_write_bytes(output, text.encode("utf-8"))
    click.echo(f"wrote {output}", err=True)
