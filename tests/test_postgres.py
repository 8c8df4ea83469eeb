"""PostgreSQL: a real server started for the session (see ``tests/postgres.py``), Chinook loaded
into it with its keys declared; connected, described, queried read-only, and asked by the agent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kb_assistant.assistant import Assistant
from kb_assistant.chains.tools.sql import run_query
from kb_assistant.errors import QueryRejected, QueryTimeout
from kb_assistant.vectorstore.databases import PostgresDatabase
from tests.files import CHINOOK
from tests.postgres import load_sqlite, postgres_server, server_bin

pytestmark = [
    pytest.mark.skipif(
        server_bin() is None,
        reason="no PostgreSQL server binary (initdb, pg_ctl); .ci/run installs Debian's postgresql",
    ),
]


@pytest.fixture(scope="session")
def pg_chinook() -> Iterator[str]:
    with postgres_server() as url:
        yield load_sqlite(CHINOOK, url, "chinook")


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()
        return int(row[0]) if row else -1


def test_connect_describe_and_query(assistant: Assistant, pg_chinook: str) -> None:
    tables = {t.name: t for t in assistant.connect_database(pg_chinook, name="pg")}
    assert tables["Customer"].rows == 59 and tables["Customer"].primary_key == ["CustomerId"]
    [fk] = tables["Album"].foreign_keys
    assert (fk.column, fk.ref_table, fk.inferred) == ("ArtistId", "Artist", False)  # declared
    result = assistant.sql('SELECT COUNT(*) FROM "Customer" WHERE "Country" = \'Brazil\'')
    assert result.rows == [(5,)]
    invoice = assistant.sql('SELECT ROUND(SUM("Total"), 2) FROM "Invoice"')
    assert invoice.rows == [(2328.6,)] and isinstance(invoice.rows[0][0], float)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ('DROP TABLE "Customer"', "only SELECT"),
        ('SELECT 1; DELETE FROM "Customer"', "exactly one statement"),
        ('WITH d AS (DELETE FROM "Customer" RETURNING *) SELECT * FROM d', "DELETE is not allowed"),
        ("SELECT pg_read_file('/etc/passwd')", r"pg_read_file\(\) is not allowed"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "set_config"),
        ("COPY \"Customer\" TO '/tmp/out.csv'", "COPY"),
    ],
)
def test_writes_and_escapes_are_refused(pg_chinook: str, sql: str, message: str) -> None:
    runner = PostgresDatabase(pg_chinook, "pg")
    with pytest.raises(QueryRejected, match=message):
        run_query(runner, sql)
    assert _count(pg_chinook, "Customer") == 59


def test_the_server_refuses_writes_even_past_the_validator(pg_chinook: str) -> None:
    runner = PostgresDatabase(pg_chinook, "pg")
    for sql in ('DELETE FROM "Customer"', "CREATE TABLE x (a int)", "SELECT nextval('s')"):
        with pytest.raises(QueryRejected, match="refused"):
            runner.execute(
                sql, row_cap=10, time_limit=5.0
            )  # the read-only transaction itself says no
    assert _count(pg_chinook, "Customer") == 59


def test_a_cross_join_is_stopped_at_the_time_limit(pg_chinook: str) -> None:
    runner = PostgresDatabase(pg_chinook, "pg")
    with pytest.raises(QueryTimeout, match="longer than 1 s"):
        run_query(runner, 'SELECT COUNT(*) FROM "Track" a, "Track" b, "Track" c', time_limit=1.0)


def test_the_agent_answers_from_postgres(assistant: Assistant, pg_chinook: str) -> None:
    assistant.connect_database(pg_chinook, name="pg")
    result = assistant.agent("Which genre has the most tracks?")
    assert result.rows == [["Rock", 1297]] and result.steps[0].input["database"] == "pg"
    year = assistant.agent("What is the total of invoices in 2010?")
    assert year.rows == [[463.67]] or round(year.rows[0][0], 2) == 463.67


def test_model_sql_with_unquoted_names_reads_the_mixed_case_tables(
    assistant: Assistant, pg_chinook: str
) -> None:
    """A model writes ``FROM Track`` (PostgreSQL reads ``track``) and qualifies tables with
    the database's name; the agent's run_sql spells them as the server does."""
    from kb_assistant.chains.tools.toolbox import AgentLimits, AgentTools
    from kb_assistant.vectorstore.tables import TableRegistry

    assistant.connect_database(pg_chinook, name="pg")
    tools = AgentTools(TableRegistry(assistant.knowledge_base().folder), None, AgentLimits())
    _, result = tools.run_sql(
        "SELECT g.Name, COUNT(*) AS n FROM pg.Track t JOIN Genre g ON t.GenreId = g.GenreId "
        "GROUP BY g.Name ORDER BY n DESC LIMIT 1"
    )
    assert result.rows == [("Rock", 1297)]
    assert 'FROM "Track" AS t JOIN "Genre" AS g' in result.sql
    _, qualified = tools.run_sql(
        "SELECT Genre.Name, COUNT(*) FROM Genre JOIN Track ON Genre.GenreId = Track.GenreId "
        "GROUP BY Genre.Name ORDER BY 2 DESC LIMIT 1"
    )
    assert qualified.rows == [("Rock", 1297)]
    # Chinook's dates are text columns here too: the tip that works on text.
    assert "the year is substr(d, 1, 4) = '2011'" in tools.list_tables()
    _, year = tools.run_sql(
        "SELECT SUM(Total) FROM Invoice WHERE substr(InvoiceDate, 1, 4) = '2011'"
    )
    assert round(year.rows[0][0], 2) == 450.58
