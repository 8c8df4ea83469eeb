"""Safe SQL for the agent's ``run_sql`` tool and ``kb sql``: validate with sqlglot, then run on
a read-only database.

Two independent layers, each enough on its own against a model that writes destructive SQL:

1. ``validate_select`` (here) fails closed: exactly one statement that sqlglot parses; its root
   is a SELECT (or a set operation of SELECTs); the *whole* tree is walked, so a DELETE inside
   a CTE is found; no statement of any writing, attaching or configuring kind, no file-reading
   or system function, and every table named must be a real table of the database (or a CTE)
   — which also rules out ``FROM 'file.csv'`` and table functions.
2. The database itself (``vectorstore.databases``) is opened read-only and enforces it at the
   engine, with a row cap and a time limit.

``run_query`` applies both. No tool ever executes model-written Python or shell. The helpers at
the end read a model's query before it runs (the tables it names, its aliases) and spell it
for the engine (``unqualified``), for the agent's routing and repairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kb_assistant.errors import QueryFailed, QueryRejected
from kb_assistant.vectorstore.databases import (
    FORBIDDEN_FUNCTIONS,
    ROW_CAP,
    TIME_LIMIT_S,
    Database,
    QueryResult,
    TableInfo,
    quote_ident,
)

_FORBIDDEN_NODES = (
    "Insert", "Update", "Delete", "Drop", "Create", "Alter", "AlterTable", "Command", "Pragma",
    "Attach", "Detach", "Copy", "Merge", "Into", "Set", "Transaction", "Commit", "Rollback",
    "TruncateTable", "LoadData", "Use", "ReadCSV", "Grant", "Revoke", "Analyze", "Describe",
    "Show", "Export", "Install", "Refresh", "Cache", "Uncache", "Kill",
)  # fmt: skip
_ROOTS = ("Select", "Union", "Intersect", "Except")


def _types(names: Sequence[str]) -> tuple[type, ...]:
    from sqlglot import exp

    return tuple(getattr(exp, n) for n in names if hasattr(exp, n))


def _function_name(node: Any) -> str | None:
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return str(node.sql_name()).lower()
    return None


def validate_select(sql: str, tables: set[str], dialect: str) -> str:
    """The statement, checked to be one read-only query over known tables.

    Args:
        tables: names of the database's tables and views (compared case-insensitively).
        dialect: sqlglot dialect ("sqlite", "duckdb", "postgres").

    Raises:
        QueryRejected: saying which rule the statement breaks.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its parse fallbacks are ours to judge
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise QueryFailed(f"the SQL could not be parsed, so it is not run ({exc})") from exc
    if len(statements) != 1:
        raise QueryRejected(f"exactly one statement is allowed (got {len(statements)})")
    tree = statements[0]
    if not isinstance(tree, _types(_ROOTS)):
        raise QueryRejected(f"only SELECT queries are allowed (got {type(tree).__name__.upper()})")
    forbidden = _types(_FORBIDDEN_NODES)
    ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
    known = {t.lower() for t in tables} | ctes
    for node in tree.walk():
        if isinstance(node, forbidden):
            raise QueryRejected(f"{type(node).__name__.upper()} is not allowed: queries only read")
        name = _function_name(node)
        if name in FORBIDDEN_FUNCTIONS:
            raise QueryRejected(f"the function {name}() is not allowed")
        if isinstance(node, exp.Table):
            table = str(node.name).lower()
            if not isinstance(node.this, exp.Identifier) or table not in known:
                shown = ", ".join(sorted(tables)) or "none"
                raise QueryFailed(f"unknown table '{node.sql()}'; the tables are: {shown}")
    return str(tree.sql(dialect=dialect))


def run_query(
    database: Database, sql: str, *, row_cap: int = ROW_CAP, time_limit: float = TIME_LIMIT_S
) -> QueryResult:
    """Validate ``sql`` for ``database``, then run it there read-only (both guards).

    Raises:
        QueryRejected: the statement broke a rule, or the engine refused it.
        QueryTimeout: it ran out of time and was interrupted.
    """
    checked = validate_select(sql, database.tables(), database.dialect)
    return database.execute(checked, row_cap=row_cap, time_limit=time_limit)


def sample_rows(database: Database, table: str, n: int = 3) -> QueryResult:
    """The first ``n`` rows of a table, through the same two guards."""
    return run_query(database, f"SELECT * FROM {quote_ident(table)} LIMIT {int(n)}")


# --- reading a model's query: what it names, and the same query spelled for the engine ---


def parse_one(sql: str, dialect: str) -> Any:
    """sqlglot's tree of ``sql``, or None where it does not parse as one statement (the
    validator then rejects it, with its reason)."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        return sqlglot.parse_one(sql, read=dialect or None)
    except SqlglotError:
        return None


def tables_named(sql: str, dialect: str) -> set[str]:
    """The tables a query reads, lower case, its CTEs and database qualifiers left out."""
    from sqlglot import exp

    tree = parse_one(sql, dialect)
    if tree is None:
        return set()
    ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
    return {t.name.lower() for t in tree.find_all(exp.Table)} - ctes


def _spell(node: Any, part: str, spelled: str | None) -> bool:
    """Quote ``node``'s ``part`` identifier as ``spelled`` where PostgreSQL would fold it to
    another name; whether it did."""
    from sqlglot import exp

    identifier = node.args.get(part)
    if not spelled or spelled == spelled.lower() or not isinstance(identifier, exp.Identifier):
        return False
    if identifier.quoted:
        return False
    node.set(part, exp.to_identifier(spelled, quoted=True))
    return True


def table_aliases(sql: str, dialect: str) -> dict[str, str]:
    """Each name a query's columns can be qualified with (alias or table) -> its table, in
    lower case, in the order the query names them."""
    from sqlglot import exp

    tree = parse_one(sql, dialect)
    if tree is None:
        return {}
    names: dict[str, str] = {}
    for table in tree.find_all(exp.Table):
        names[table.alias_or_name] = table.name.lower()
    return names


def unqualified(
    sql: str, dialect: str, databases: set[str], schema: Sequence[TableInfo] = ()
) -> str:
    """``sql`` with every table qualifier that names one of ``databases`` removed; for
    PostgreSQL, also with table and column names spelled as the ``schema`` spells them
    (``Track`` unquoted is ``track`` there, which does not exist when the table is "Track")."""
    from sqlglot import exp

    tree = parse_one(sql, dialect)
    if tree is None:
        return sql
    changed = False
    for table in tree.find_all(exp.Table):
        if table.db in databases and not table.catalog:
            table.set("db", None)
            changed = True
    if dialect == "postgres":
        names = {t.name.lower(): t.name for t in schema}
        columns = {c.name.lower(): c.name for t in schema for c in t.columns}
        aliases = {str(t.alias).lower() for t in tree.find_all(exp.Table) if t.alias}
        for node in tree.find_all(exp.Table, exp.Column):
            spelled = (names if isinstance(node, exp.Table) else columns).get(node.name.lower())
            changed |= _spell(node, "this", spelled)
            qualifier = node.args.get("table") if isinstance(node, exp.Column) else None
            if isinstance(qualifier, exp.Identifier) and qualifier.name.lower() not in aliases:
                changed |= _spell(node, "table", names.get(qualifier.name.lower()))
    return str(tree.sql(dialect=dialect)) if changed else sql
