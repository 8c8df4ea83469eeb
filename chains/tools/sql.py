"""Safe SQL for the agent's ``run_sql`` tool: validate with sqlglot, execute read-only.

Two independent layers, each enough on its own against a model that writes destructive SQL:

1. ``validate_select`` fails closed: exactly one statement that sqlglot parses; its root is a
   SELECT (or a set operation of SELECTs); the *whole* tree is walked, so a DELETE inside a CTE
   is found; no statement of any writing, attaching or configuring kind, no file-reading or
   system function, and every table named must be a real table of the database (or a CTE) —
   which also rules out ``FROM 'file.csv'`` and table functions.
2. The executor opens the database read-only and enforces it at the engine: SQLite ``mode=ro``
   plus ``query_only``, an authorizer that allows only reads, ``SQLITE_LIMIT_ATTACHED`` = 0
   (read-only mode alone still lets ``ATTACH``/``VACUUM INTO`` create files), and a progress
   handler for the time limit; DuckDB ``read_only=True`` with external access disabled and
   ``interrupt()`` on a timer. Rows are capped; the cap is reported.

No tool ever executes model-written Python or shell.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from errors import QueryRejected, QueryTimeout

logger = logging.getLogger(__name__)
ROW_CAP = 200
TIME_LIMIT_S = 10.0

_FORBIDDEN_NODES = (
    "Insert", "Update", "Delete", "Drop", "Create", "Alter", "AlterTable", "Command", "Pragma",
    "Attach", "Detach", "Copy", "Merge", "Into", "Set", "Transaction", "Commit", "Rollback",
    "TruncateTable", "LoadData", "Use", "ReadCSV", "Grant", "Revoke", "Analyze", "Describe",
    "Show", "Export", "Install", "Refresh", "Cache", "Uncache", "Kill",
)  # fmt: skip
_FORBIDDEN_FUNCTIONS = frozenset(
    "read_csv read_csv_auto read_parquet parquet_scan read_json read_json_auto read_ndjson "
    "read_text read_blob glob sqlite_scan sqlite_attach postgres_scan postgres_attach "
    "mysql_scan load_extension readfile writefile edit fts3_tokenizer pg_read_file "
    "pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export dblink query query_table "
    "set_config pg_sleep sleep current_setting".split()
)
_ROOTS = ("Select", "Union", "Intersect", "Except")


@dataclass(frozen=True)
class QueryResult:
    """Rows of a read-only query, with the SQL that produced them."""

    sql: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    seconds: float


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
        raise QueryRejected(f"the SQL could not be parsed, so it is not run ({exc})") from exc
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
        if name in _FORBIDDEN_FUNCTIONS:
            raise QueryRejected(f"the function {name}() is not allowed")
        if isinstance(node, exp.Table):
            table = str(node.name).lower()
            if not isinstance(node.this, exp.Identifier) or table not in known:
                shown = ", ".join(sorted(tables)) or "none"
                raise QueryRejected(f"unknown table '{node.sql()}'; the tables are: {shown}")
    return str(tree.sql(dialect=dialect))


# --- SQLite -------------------------------------------------------------------------------

_SQLITE_READS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}  # fmt: skip


def _sqlite_authorizer(action: int, arg1: str | None, *_: object) -> int:
    if action not in _SQLITE_READS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg1 or "").lower() in _FORBIDDEN_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class _ReadOnlyQueries:
    """What both engines share: a database file, and how a timeout is reported."""

    dialect = ""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise QueryRejected(f"database file {path} not found")
        self.path = path

    @staticmethod
    def _timed_out(time_limit: float) -> QueryTimeout:
        return QueryTimeout(
            f"the query ran longer than {time_limit:g} s and was stopped; narrow it "
            "(filters, LIMIT) and try again"
        )


class SQLiteQueries(_ReadOnlyQueries):
    """Read-only queries on a SQLite file."""

    dialect = "sqlite"

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        db.execute("PRAGMA query_only = ON")  # before the authorizer, which forbids PRAGMA
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        db.set_authorizer(_sqlite_authorizer)
        return db

    def tables(self) -> set[str]:
        """Names of tables and views."""
        db = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        finally:
            db.close()
        return {r[0] for r in rows}

    def run(
        self, sql: str, *, row_cap: int = ROW_CAP, time_limit: float = TIME_LIMIT_S
    ) -> QueryResult:
        """Validate and run one query; at most ``row_cap`` rows, at most ``time_limit`` s.

        Raises:
            QueryRejected: the statement broke a rule, or the engine refused it.
            QueryTimeout: it ran out of time and was interrupted.
        """
        checked = validate_select(sql, self.tables(), self.dialect)
        return self._execute(checked, row_cap, time_limit)

    def _execute(self, sql: str, row_cap: int, time_limit: float) -> QueryResult:
        db = self._connect()
        started = time.perf_counter()
        deadline = started + time_limit
        db.set_progress_handler(lambda: int(time.perf_counter() > deadline), 10_000)
        try:
            cursor = db.execute(sql)
            rows = cursor.fetchmany(row_cap + 1)
            columns = [d[0] for d in cursor.description or []]
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise self._timed_out(time_limit) from exc
            raise QueryRejected(f"the database refused the query ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise QueryRejected(f"the database refused the query ({exc})") from exc
        finally:
            db.close()
        return QueryResult(
            sql, columns, rows[:row_cap], len(rows) > row_cap, time.perf_counter() - started
        )


# --- DuckDB -------------------------------------------------------------------------------


class DuckDBQueries(_ReadOnlyQueries):
    """Read-only queries on a DuckDB file (where uploaded CSV/Excel tables live)."""

    dialect = "duckdb"

    def _connect(self) -> Any:
        import duckdb

        return duckdb.connect(
            str(self.path), read_only=True, config={"enable_external_access": False}
        )

    def tables(self) -> set[str]:
        """Names of tables and views."""
        db = self._connect()
        try:
            rows = db.execute("SELECT table_name FROM information_schema.tables").fetchall()
            return {r[0] for r in rows if not r[0].startswith("_kb_")}  # bookkeeping is hidden
        finally:
            db.close()

    def run(
        self, sql: str, *, row_cap: int = ROW_CAP, time_limit: float = TIME_LIMIT_S
    ) -> QueryResult:
        """Validate and run one query (see ``SQLiteQueries.run``)."""
        import duckdb

        checked = validate_select(sql, self.tables(), self.dialect)
        db = self._connect()
        timer = threading.Timer(time_limit, db.interrupt)
        started = time.perf_counter()
        timer.start()
        try:
            cursor = db.execute(checked)
            rows = cursor.fetchmany(row_cap + 1)
            columns = [d[0] for d in cursor.description or []]
        except duckdb.InterruptException as exc:
            raise self._timed_out(time_limit) from exc
        except duckdb.Error as exc:
            raise QueryRejected(f"the database refused the query ({exc})") from exc
        finally:
            timer.cancel()
            db.close()
        return QueryResult(
            checked, columns, rows[:row_cap], len(rows) > row_cap, time.perf_counter() - started
        )
