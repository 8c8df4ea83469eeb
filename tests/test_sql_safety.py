"""run_sql's safety rules, each proved against a real database (Chinook, SQLite and DuckDB)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from kb_assistant.chains.tools.sql import run_query, validate_select
from kb_assistant.errors import QueryRejected, QueryTimeout
from kb_assistant.vectorstore.databases import DuckDBDatabase, SQLiteDatabase
from tests.files import CHINOOK


@pytest.fixture
def chinook(tmp_path: Path) -> Path:
    copy = tmp_path / "chinook.sqlite"
    shutil.copy(CHINOOK, copy)
    return copy


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_select_runs_with_a_row_cap(chinook: Path) -> None:
    queries = SQLiteDatabase(chinook)
    result = run_query(queries, "SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'")
    assert result.rows == [(5,)]
    capped = run_query(queries, "SELECT Name FROM Track", row_cap=10)
    assert len(capped.rows) == 10 and capped.truncated and capped.columns == ["Name"]
    joined = run_query(
        queries,
        "WITH t AS (SELECT InvoiceId, Total FROM Invoice) SELECT ROUND(SUM(Total), 2) FROM t",
    )
    assert joined.rows == [(2328.6,)]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE Track", "only SELECT"),
        ("SELECT 1; DELETE FROM Track", "exactly one statement"),
        ("ATTACH DATABASE '/tmp/evil.db' AS evil", "only SELECT"),
        ("VACUUM INTO '/tmp/copy.db'", "only SELECT"),
        ("PRAGMA query_only = OFF", "only SELECT"),
        (
            "WITH gone AS (DELETE FROM Track RETURNING *) SELECT * FROM gone",
            "DELETE is not allowed",
        ),
        ("SELECT * INTO Backup FROM Track", "INTO is not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "unknown table|not allowed"),
        ("SELECT * FROM '/etc/passwd'", "unknown table"),
        ("SELECT * FROM sqlite_master", "unknown table"),
        ("SELECT load_extension('x')", r"load_extension\(\) is not allowed"),
        ("SELECT * FROM Track WHERE", "could not be parsed"),
        ("INSERT INTO Genre VALUES (99, 'x')", "only SELECT"),
    ],
)
def test_every_writing_or_escaping_statement_is_refused(
    chinook: Path, sql: str, reason: str
) -> None:
    before = digest(chinook)
    with pytest.raises(QueryRejected, match=reason):
        run_query(SQLiteDatabase(chinook), sql)
    assert digest(chinook) == before
    assert sorted(p.name for p in chinook.parent.iterdir()) == ["chinook.sqlite"]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM Track",
        "DROP TABLE Track",
        "ATTACH DATABASE '{dir}/evil.db' AS evil",
        "VACUUM INTO '{dir}/copy.db'",
        "PRAGMA query_only = OFF",
        "CREATE TABLE x (a)",
        "SELECT * FROM sqlite_master",
        "SELECT sql FROM sqlite_schema",
        "SELECT * FROM sqlite_temp_master",
        "SELECT * FROM pragma_table_info('Track')",
        "SELECT * FROM evil.Track",
    ],
)
def test_the_engine_refuses_writes_even_past_the_validator(chinook: Path, sql: str) -> None:
    """Defence in depth: the connection alone (validator bypassed) blocks what the validator
    would have caught: writes, attachments, the schema tables, other databases."""
    queries = SQLiteDatabase(chinook)
    with pytest.raises(QueryRejected, match=r"refused|no such table"):
        queries.execute(sql.format(dir=chinook.parent), row_cap=10, time_limit=5.0)
    assert sorted(p.name for p in chinook.parent.iterdir()) == ["chinook.sqlite"]
    assert run_query(queries, "SELECT COUNT(*) FROM Track").rows == [(3503,)]


def test_a_runaway_query_is_stopped_at_the_time_limit(chinook: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(QueryTimeout, match="longer than 1 s"):
        run_query(
            SQLiteDatabase(chinook), "SELECT COUNT(*) FROM Track a, Track b, Track c", time_limit=1
        )
    assert time.perf_counter() - started < 10  # 4.3e10 rows would take hours


def test_duckdb_tables_are_read_only_and_sealed_from_files(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "tables.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE cars AS SELECT * FROM range(100000) r(i)")
    queries = DuckDBDatabase(path)
    assert run_query(queries, "SELECT COUNT(*) FROM cars").rows == [(100000,)]
    for sql in ("DELETE FROM cars", "SELECT * FROM '/etc/passwd'", "COPY cars TO '/tmp/x.csv'",
                "SELECT * FROM read_csv_auto('/etc/passwd')"):  # fmt: skip
        with pytest.raises(QueryRejected):
            run_query(queries, sql)
    with pytest.raises(QueryTimeout):
        run_query(
            queries,
            "SELECT COUNT(*) FROM cars a, cars b, cars c WHERE a.i + b.i = c.i",
            time_limit=1,
        )
    assert run_query(queries, "SELECT COUNT(*) FROM cars").rows == [(100000,)]


def test_validation_returns_normalised_sql() -> None:
    assert (
        validate_select("select  count(*)  from track", {"Track"}, "sqlite")
        == "SELECT COUNT(*) FROM track"
    )
