"""``kb table``, ``db``, ``tables``, ``sql``: tables and databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kb_assistant.cli.base import (
    Context,
    emit,
    json_option,
    kb_option,
    main,
    reported,
)


def _table_rows(infos: list[Any]) -> list[dict[str, Any]]:
    from kb_assistant.vectorstore.tables import table_json

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
        click.echo(f"{r['database']}.{r['name']}  {r['rows']} rows{note}  ({columns})")


@main.group("table")
def table_group() -> None:
    """Add or drop tables (CSV, Excel, PDF) that questions and SQL can use."""


@table_group.command("add")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--name",
    help="Table name (default: from the file name; Excel adds the sheet, PDF _p<page>_t<n>).",
)
@kb_option
@json_option
@click.pass_obj
def table_add(
    ctx: Context, file: Path, name: str | None, kb_name: str | None, as_json: bool
) -> None:
    """Load FILE.csv, FILE.xlsx or the bordered tables of FILE.pdf: header detected, types
    inferred."""
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
@click.option(
    "--db", "database", metavar="NAME", help="A connected database (default: the tables)."
)
@kb_option
@json_option
@click.pass_obj
def sql_command(
    ctx: Context, query: str, database: str | None, kb_name: str | None, as_json: bool
) -> None:
    """Run one read-only SELECT (checked, row-capped, time-limited)."""
    with reported(as_json):
        result = ctx.assistant().sql(query, database=database, kb=kb_name)
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
