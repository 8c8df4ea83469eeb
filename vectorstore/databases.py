"""The databases queries run on: SQLite files, the DuckDB file of uploaded tables, PostgreSQL.

Each engine opens its database read-only and enforces it at the engine, whatever SQL it is
given: SQLite ``mode=ro`` plus ``query_only``, an authorizer that allows only reads,
``SQLITE_LIMIT_ATTACHED`` = 0 (read-only mode alone still lets ``ATTACH``/``VACUUM INTO``
create files), and a progress handler for the time limit; DuckDB ``read_only=True`` with
external access disabled and ``interrupt()`` on a timer; PostgreSQL
``default_transaction_read_only`` at connect, then ``SET TRANSACTION READ ONLY`` and a
``statement_timeout``, always rolled back. Rows are capped; the cap is reported. This is the
second of two independent guards: the first, ``chains.tools.sql.validate_select``, checks the
statement before it gets here (``chains.tools.sql.run_query`` applies both).

Every engine shares one execution skeleton (``Database.execute``); an engine says how to open
a session, which of its errors mean "out of time", and how it names result columns. Engines
also describe their database (columns, primary and foreign keys, row counts): the agent's
form grammar and its joins are built from that.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kb_assistant.errors import QueryFailed, QueryRejected, QueryTimeout

logger = logging.getLogger(__name__)
ROW_CAP = 200
TIME_LIMIT_S = 10.0

# Functions that read files, reach the server or change state: refused by the validator and,
# for SQLite, by the engine's authorizer too.
FORBIDDEN_FUNCTIONS = frozenset(
    "read_csv read_csv_auto read_parquet parquet_scan read_json read_json_auto read_ndjson "
    "read_text read_blob glob sqlite_scan sqlite_attach postgres_scan postgres_attach "
    "mysql_scan load_extension readfile writefile edit fts3_tokenizer pg_read_file "
    "pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export dblink query query_table "
    "set_config pg_sleep sleep current_setting pg_terminate_backend pg_cancel_backend "
    "pg_reload_conf pg_rotate_logfile nextval setval pg_advisory_lock pg_notify "
    "pg_promote txid_current pg_sleep_for pg_sleep_until lo_unlink lo_create".split()
)


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
    database: str  # 'tables' (uploaded) or a connected database's name
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


def _plain(value: Any) -> Any:
    """Decimals (PostgreSQL NUMERIC) as floats, so results are plain JSON-able numbers."""
    return float(value) if isinstance(value, Decimal) else value


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (the same in SQLite, DuckDB and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _timed_out(time_limit: float) -> QueryTimeout:
    return QueryTimeout(
        f"the query ran longer than {time_limit:g} s and was stopped; narrow it "
        "(filters, LIMIT) and try again"
    )


Run = Callable[[str], Any]  # SQL -> a cursor


class Database:
    """One database queries can go to (a *database* in the glossary), opened read-only."""

    dialect = ""

    def __init__(self, name: str) -> None:
        self.name = name  # what listings show: 'tables' or the connection's name

    def tables(self) -> set[str]:
        """Names of the tables and views queries may use."""
        raise NotImplementedError

    def describe(self) -> list[TableInfo]:
        """Every table with its columns, keys and row count."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _session(self, time_limit: float) -> Iterator[Run]:
        """A read-only connection bounded by ``time_limit``; yields how to run SQL on it."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _is_timeout(self, error: Exception) -> bool:
        """Whether an error of the engine means the time limit stopped the query."""
        raise NotImplementedError

    def _errors(self) -> tuple[type[Exception], ...]:
        """The engine's own error classes (refusals, timeouts)."""
        raise NotImplementedError

    @staticmethod
    def _column_names(cursor: Any) -> list[str]:
        return [d[0] for d in cursor.description or []]

    def execute(
        self, sql: str, *, row_cap: int = ROW_CAP, time_limit: float = TIME_LIMIT_S
    ) -> QueryResult:
        """Run ``sql`` read-only: at most ``row_cap`` rows, at most ``time_limit`` s. The SQL
        is not validated here (``chains.tools.sql.run_query`` does that first); the engine
        refuses any write on its own.

        Raises:
            QueryFailed: the engine refused the query.
            QueryTimeout: it ran out of time and was interrupted.
        """
        started = time.perf_counter()
        try:
            with self._session(time_limit) as run:
                cursor = run(sql)
                rows = cursor.fetchmany(row_cap + 1)
                columns = self._column_names(cursor)
        except self._errors() as exc:
            if self._is_timeout(exc):
                raise _timed_out(time_limit) from exc
            reason = str(exc).strip()
            raise QueryFailed(f"the database refused the query ({reason})") from exc
        plain = [tuple(_plain(v) for v in r) for r in rows[:row_cap]]
        return QueryResult(sql, columns, plain, len(rows) > row_cap, time.perf_counter() - started)


class _FileDatabase(Database):
    def __init__(self, path: Path, name: str) -> None:
        if not path.is_file():
            raise QueryRejected(f"database file {path} not found")
        super().__init__(name)
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
    if action == sqlite3.SQLITE_FUNCTION and (arg1 or "").lower() in FORBIDDEN_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteDatabase(_FileDatabase):
    """A SQLite file, read-only."""

    dialect = "sqlite"

    def __init__(self, path: Path, name: str = "") -> None:
        super().__init__(path, name or path.stem)

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
                    TableInfo(table, self.name, [Column(r[0], r[1] or "") for r in info], rows,
                              primary_key=keys, foreign_keys=foreign)
                )  # fmt: skip
            return finish_schema(out)
        finally:
            db.close()

    @contextlib.contextmanager
    def _session(self, time_limit: float) -> Iterator[Run]:
        db = self._connect()
        deadline = time.perf_counter() + time_limit
        db.set_progress_handler(lambda: int(time.perf_counter() > deadline), 10_000)
        try:
            yield db.execute
        finally:
            db.close()

    def _errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.DatabaseError,)

    def _is_timeout(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.OperationalError) and "interrupted" in str(error)


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
            TableInfo(t.name, t.database, t.columns, t.rows, t.origin, t.truncated,
                      t.primary_key, [fk for fk in fks if fk.ref_column])
        )  # fmt: skip
    return out


# --- DuckDB -------------------------------------------------------------------------------

INTERNAL_PREFIX = "_kb_"  # bookkeeping tables of the uploads file, hidden from queries


class DuckDBDatabase(_FileDatabase):
    """The DuckDB file where uploaded CSV/Excel tables live, read-only."""

    dialect = "duckdb"

    def __init__(self, path: Path, name: str = "tables") -> None:
        super().__init__(path, name)

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
                    TableInfo(table, self.name, [Column(c[0], str(c[1])) for c in described],
                              rows, origin, truncated, keys, fks)
                )  # fmt: skip
            return finish_schema(out)
        finally:
            db.close()

    @contextlib.contextmanager
    def _session(self, time_limit: float) -> Iterator[Run]:
        db = self._connect()
        timer = threading.Timer(time_limit, db.interrupt)
        timer.start()
        try:
            yield db.execute
        finally:
            timer.cancel()
            db.close()

    def _errors(self) -> tuple[type[Exception], ...]:
        import duckdb

        return (duckdb.Error,)

    def _is_timeout(self, error: Exception) -> bool:
        import duckdb

        return isinstance(error, duckdb.InterruptException)


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


class PostgresDatabase(Database):
    """A PostgreSQL database (psycopg 3), read-only."""

    dialect = "postgres"

    def __init__(self, url: str, name: str = "") -> None:
        super().__init__(name or "postgres")
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
            out.append(TableInfo(table, self.name, columns[table], rows,
                                 primary_key=keys.get(table, []),
                                 foreign_keys=fks.get(table, [])))  # fmt: skip
        return finish_schema(out)

    @contextlib.contextmanager
    def _session(self, time_limit: float) -> Iterator[Run]:
        db = self._connect(time_limit)
        try:
            db.execute("SET TRANSACTION READ ONLY")
            db.execute(f"SET LOCAL statement_timeout = {int(time_limit * 1000)}")
            yield db.execute
        finally:
            db.rollback()
            db.close()

    def _errors(self) -> tuple[type[Exception], ...]:
        import psycopg

        return (psycopg.Error,)

    def _is_timeout(self, error: Exception) -> bool:
        import psycopg

        return isinstance(error, psycopg.errors.QueryCanceled)

    @staticmethod
    def _column_names(cursor: Any) -> list[str]:
        return [d.name for d in cursor.description or []]
