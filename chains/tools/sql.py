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
   ``interrupt()`` on a timer; PostgreSQL ``default_transaction_read_only`` at connect, then
   ``SET TRANSACTION READ ONLY`` and a ``statement_timeout``, always rolled back. Rows are
   capped; the cap is reported.

The runners also describe their database (columns, primary and foreign keys, row counts):
the agent's slot-filling grammar and its joins are built from that.

No tool ever executes model-written Python or shell.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kb_assistant.errors import QueryRejected, QueryTimeout

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
    "set_config pg_sleep sleep current_setting pg_terminate_backend pg_cancel_backend "
    "pg_reload_conf pg_rotate_logfile nextval setval pg_advisory_lock pg_notify "
    "pg_promote txid_current pg_sleep_for pg_sleep_until lo_unlink lo_create".split()
)
_ROOTS = ("Select", "Union", "Intersect", "Except")


@dataclass(frozen=True)
class Column:
    """A column and its SQL type."""

    name: str
    type: str


@dataclass(frozen=True)
class ForeignKey:
    """``column`` of a table refers to ``ref_table.ref_column``."""

    column: str
    ref_table: str
    ref_column: str
    inferred: bool = False  # not declared: a column named like another table's key


@dataclass(frozen=True)
class TableInfo:
    """One queryable table: where it lives and what it holds."""

    name: str
    source: str  # 'tables' (uploaded) or a connected database's name
    columns: list[Column]
    rows: int
    origin: str = ""  # the file it came from, for uploads
    truncated: bool = False
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)


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


def _plain(value: Any) -> Any:
    """Decimals (PostgreSQL NUMERIC) as floats, so results are plain JSON-able numbers."""
    return float(value) if isinstance(value, Decimal) else value


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (the same in SQLite, DuckDB and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


class ReadOnlyQueries:
    """What every engine shares: validation first, then a read-only execution; a schema."""

    dialect = ""

    def __init__(self, source: str) -> None:
        self.source = source  # the name listings show: 'tables' or the connection's name

    def tables(self) -> set[str]:
        """Names of the tables and views queries may use."""
        raise NotImplementedError

    def describe(self) -> list[TableInfo]:
        """Every table with its columns, keys and row count."""
        raise NotImplementedError

    def _execute(self, sql: str, row_cap: int, time_limit: float) -> QueryResult:
        raise NotImplementedError

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

    def sample(self, table: str, n: int = 3) -> QueryResult:
        """The first ``n`` rows of a table (through the same safe path)."""
        return self.run(f"SELECT * FROM {quote_ident(table)} LIMIT {int(n)}")

    @staticmethod
    def _timed_out(time_limit: float) -> QueryTimeout:
        return QueryTimeout(
            f"the query ran longer than {time_limit:g} s and was stopped; narrow it "
            "(filters, LIMIT) and try again"
        )

    @staticmethod
    def _result(sql: str, columns: list[str], rows: list[Any], cap: int, t0: float) -> QueryResult:
        plain = [tuple(_plain(v) for v in r) for r in rows[:cap]]
        return QueryResult(sql, columns, plain, len(rows) > cap, time.perf_counter() - t0)


class _FileQueries(ReadOnlyQueries):
    def __init__(self, path: Path, source: str) -> None:
        if not path.is_file():
            raise QueryRejected(f"database file {path} not found")
        super().__init__(source)
        self.path = path


# --- SQLite -------------------------------------------------------------------------------

_SQLITE_READS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}  # fmt: skip


def _sqlite_authorizer(action: int, arg1: str | None, *_: object) -> int:
    if action not in _SQLITE_READS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_READ and (arg1 or "").lower().startswith(("sqlite_", "pragma_")):
        return sqlite3.SQLITE_DENY  # the schema and engine internals: not registered tables
    if action == sqlite3.SQLITE_FUNCTION and (arg1 or "").lower() in _FORBIDDEN_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteQueries(_FileQueries):
    """Read-only queries on a SQLite file."""

    dialect = "sqlite"

    def __init__(self, path: Path, source: str = "") -> None:
        super().__init__(path, source or path.stem)

    @property
    def _uri(self) -> str:
        return f"file:{quote(str(self.path.resolve()))}?mode=ro"

    def _catalog_connection(self) -> sqlite3.Connection:
        """A read-only connection for the system's own catalogue queries."""
        return sqlite3.connect(self._uri, uri=True)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
        db.execute("PRAGMA query_only = ON")  # before the authorizer, which forbids PRAGMA
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        db.set_authorizer(_sqlite_authorizer)
        return db

    def tables(self) -> set[str]:
        """Names of tables and views."""
        db = self._catalog_connection()
        try:
            rows = db.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        finally:
            db.close()
        return {r[0] for r in rows}

    def describe(self) -> list[TableInfo]:
        """Tables with columns, keys (from the schema's declarations) and row counts."""
        db = self._catalog_connection()
        try:
            out = []
            for table in sorted(self.tables()):
                q = quote_literal(table)
                info = db.execute(f"SELECT name, type, pk FROM pragma_table_info({q})").fetchall()
                fks = db.execute(
                    f'SELECT "from", "table", "to" FROM pragma_foreign_key_list({q})'
                ).fetchall()
                keys = [r[0] for r in sorted((r for r in info if r[2]), key=lambda r: r[2])]
                rows = int(db.execute(f"SELECT COUNT(*) FROM {quote_ident(table)}").fetchone()[0])
                foreign = [ForeignKey(f[0], f[1], f[2] or "") for f in fks]
                out.append(
                    TableInfo(table, self.source, [Column(r[0], r[1] or "") for r in info], rows,
                              primary_key=keys, foreign_keys=foreign)
                )  # fmt: skip
            return finish_schema(out)
        finally:
            db.close()

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
        return self._result(sql, columns, rows, row_cap, started)


def finish_schema(tables: list[TableInfo]) -> list[TableInfo]:
    """Complete foreign keys: targets that name no column refer to the primary key, and a
    column with no declared key that carries another table's one-column key name
    (``ArtistId`` → ``Artist.ArtistId``, ``artist_id`` → ``artist.id``) is taken as an
    inferred key, so joins work on databases that never declared theirs (Chinook's SQLite).
    """
    keys = {t.name.lower(): t.primary_key for t in tables}
    by_key: dict[str, tuple[str, str]] = {}
    for t in tables:
        if len(t.primary_key) == 1:
            key = t.primary_key[0]
            by_key.setdefault(key.lower(), (t.name, key))
            if key.lower() == "id":
                by_key.setdefault(f"{t.name.lower()}_id", (t.name, key))
                by_key.setdefault(f"{t.name.lower()}id", (t.name, key))
    out = []
    for t in tables:
        fks = [
            fk if fk.ref_column else ForeignKey(fk.column, fk.ref_table,
                                                (keys.get(fk.ref_table.lower()) or [""])[0])
            for fk in t.foreign_keys
        ]  # fmt: skip
        declared = {fk.column.lower() for fk in fks}
        for column in t.columns:
            target = by_key.get(column.name.lower())
            if target and target[0] != t.name and column.name.lower() not in declared:
                fks.append(ForeignKey(column.name, target[0], target[1], inferred=True))
        out.append(
            TableInfo(t.name, t.source, t.columns, t.rows, t.origin, t.truncated,
                      t.primary_key, [fk for fk in fks if fk.ref_column])
        )  # fmt: skip
    return out


# --- DuckDB -------------------------------------------------------------------------------

INTERNAL_PREFIX = "_kb_"  # bookkeeping tables of the uploads file, hidden from queries


class DuckDBQueries(_FileQueries):
    """Read-only queries on a DuckDB file (where uploaded CSV/Excel tables live)."""

    dialect = "duckdb"

    def __init__(self, path: Path, source: str = "tables") -> None:
        super().__init__(path, source)

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
            return {r[0] for r in rows if not r[0].startswith(INTERNAL_PREFIX)}
        finally:
            db.close()

    def describe(self) -> list[TableInfo]:
        """Tables with columns, keys, row counts and the file each came from."""
        db = self._connect()
        try:
            names = sorted(self.tables())
            origins: dict[str, tuple[str, bool]] = {}
            if f"{INTERNAL_PREFIX}table_origin" in {
                r[0]
                for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }:
                origins = {
                    r[0]: (r[1], bool(r[2]))
                    for r in db.execute("SELECT * FROM _kb_table_origin").fetchall()
                }
            constraints = db.execute(
                "SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
                "referenced_column_names FROM duckdb_constraints() "
                "WHERE constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
            ).fetchall()
            out = []
            for table in names:
                described = db.execute(f"DESCRIBE {quote_ident(table)}").fetchall()
                # fetchall: DuckDB refuses new work on a connection with a half-read result.
                rows = int(
                    db.execute(f"SELECT COUNT(*) FROM {quote_ident(table)}").fetchall()[0][0]
                )
                mine = [c for c in constraints if c[0] == table]
                keys = next((list(c[2]) for c in mine if c[1] == "PRIMARY KEY"), [])
                fks = [ForeignKey(col, c[3], ref) for c in mine if c[1] == "FOREIGN KEY"
                       for col, ref in zip(c[2], c[4], strict=False)]  # fmt: skip
                origin, truncated = origins.get(table, ("", False))
                out.append(
                    TableInfo(table, self.source, [Column(c[0], str(c[1])) for c in described],
                              rows, origin, truncated, keys, fks)
                )  # fmt: skip
            return finish_schema(out)
        finally:
            db.close()

    def _execute(self, sql: str, row_cap: int, time_limit: float) -> QueryResult:
        import duckdb

        db = self._connect()
        timer = threading.Timer(time_limit, db.interrupt)
        started = time.perf_counter()
        timer.start()
        try:
            cursor = db.execute(sql)
            rows = cursor.fetchmany(row_cap + 1)
            columns = [d[0] for d in cursor.description or []]
        except duckdb.InterruptException as exc:
            raise self._timed_out(time_limit) from exc
        except duckdb.Error as exc:
            raise QueryRejected(f"the database refused the query ({exc})") from exc
        finally:
            timer.cancel()
            db.close()
        return self._result(sql, columns, rows, row_cap, started)


# --- PostgreSQL ---------------------------------------------------------------------------

_PG_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON a.attrelid = c.oid
JOIN pg_namespace n ON c.relnamespace = n.oid
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
_PG_KEYS = """
SELECT con.contype, cl.relname, att.attname, clf.relname, attf.attname
FROM pg_constraint con
JOIN pg_class cl ON con.conrelid = cl.oid
JOIN pg_namespace n ON cl.relnamespace = n.oid
CROSS JOIN LATERAL unnest(con.conkey, coalesce(con.confkey, con.conkey)) WITH ORDINALITY
    AS k(a, f, i)
JOIN pg_attribute att ON att.attrelid = cl.oid AND att.attnum = k.a
LEFT JOIN pg_class clf ON con.confrelid = clf.oid
LEFT JOIN pg_attribute attf ON attf.attrelid = clf.oid AND attf.attnum = k.f
WHERE con.contype IN ('p', 'f') AND n.nspname = current_schema()
ORDER BY cl.relname, con.conname, k.i
"""


def postgres_conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy-style URL (``postgresql+psycopg://...``).

    Raises:
        QueryRejected: the URL is not a PostgreSQL URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise QueryRejected(f"not a PostgreSQL URL: {redact_url(url)}")
    return f"postgresql://{rest}"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class PostgresQueries(ReadOnlyQueries):
    """Read-only queries on a PostgreSQL database (psycopg 3)."""

    dialect = "postgres"

    def __init__(self, url: str, source: str = "") -> None:
        super().__init__(source or "postgres")
        self.conninfo = postgres_conninfo(url)
        self.url = url

    def _connect(self, time_limit: float = TIME_LIMIT_S) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise QueryRejected("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from exc
        try:
            db = psycopg.connect(
                self.conninfo,
                connect_timeout=5,
                autocommit=False,
                # Read-only before any statement runs, and bounded even if SET fails.
                options=f"-c default_transaction_read_only=on "
                f"-c statement_timeout={int(time_limit * 1000)}",
            )
        except psycopg.Error as exc:
            raise QueryRejected(
                f"cannot connect to {redact_url(self.url)} ({str(exc).strip()})"
            ) from exc
        db.read_only = True
        return db

    def _catalog(self, sql: str) -> list[tuple[Any, ...]]:
        db = self._connect()
        try:
            db.execute("SET TRANSACTION READ ONLY")
            return list(db.execute(sql).fetchall())
        finally:
            db.rollback()
            db.close()

    def tables(self) -> set[str]:
        """Names of the tables and views of the connection's current schema."""
        return {r[0] for r in self._catalog(_PG_COLUMNS)}

    def describe(self) -> list[TableInfo]:
        """Tables with columns, keys and (estimated for large tables) row counts."""
        columns: dict[str, list[Column]] = {}
        for table, name, kind in self._catalog(_PG_COLUMNS):
            columns.setdefault(table, []).append(Column(name, kind))
        keys: dict[str, list[str]] = {}
        fks: dict[str, list[ForeignKey]] = {}
        for kind, table, column, ref_table, ref_column in self._catalog(_PG_KEYS):
            if kind == "p":
                keys.setdefault(table, []).append(column)
            else:
                fks.setdefault(table, []).append(ForeignKey(column, ref_table, ref_column))
        counts = dict(self._catalog(
            "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace n "
            "ON c.relnamespace = n.oid WHERE n.nspname = current_schema()"
        ))  # fmt: skip
        out = []
        for table in sorted(columns):
            rows = int(counts.get(table, -1))
            if rows < 0 or rows < 100_000:  # never analysed, or small: count exactly
                rows = int(self._catalog(f"SELECT COUNT(*) FROM {quote_ident(table)}")[0][0])
            out.append(TableInfo(table, self.source, columns[table], rows,
                                 primary_key=keys.get(table, []),
                                 foreign_keys=fks.get(table, [])))  # fmt: skip
        return finish_schema(out)

    def _execute(self, sql: str, row_cap: int, time_limit: float) -> QueryResult:
        import psycopg

        db = self._connect(time_limit)
        started = time.perf_counter()
        try:
            db.execute("SET TRANSACTION READ ONLY")
            db.execute(f"SET LOCAL statement_timeout = {int(time_limit * 1000)}")
            cursor = db.execute(sql)
            rows = cursor.fetchmany(row_cap + 1)
            columns = [d.name for d in cursor.description or []]
        except psycopg.errors.QueryCanceled as exc:
            raise self._timed_out(time_limit) from exc
        except psycopg.Error as exc:
            raise QueryRejected(f"the database refused the query ({str(exc).strip()})") from exc
        finally:
            db.rollback()
            db.close()
        return self._result(sql, columns, rows, row_cap, started)
