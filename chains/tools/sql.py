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

``run_query`` applies both. No tool ever executes model-written Python or shell.
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
