"""Tables and databases of a knowledge base, queried only through the safe SQL path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import Assistant
from kb_assistant.cli import EXIT_ERROR, main
from kb_assistant.errors import QueryRejected, TableError
from tests.files import CHINOOK, make_xlsx


@pytest.fixture
def weather() -> Path:
    from vega_datasets import local_data

    return Path(local_data.seattle_weather.filepath)


def test_csv_becomes_a_typed_table(assistant: Assistant, weather: Path) -> None:
    [info] = assistant.add_table(weather)
    types = {c.name: c.type for c in info.columns}
    assert info.name == "seattle_weather" and info.rows == 1461
    assert types == {"date": "TIMESTAMP", "precipitation": "DOUBLE", "temp_max": "DOUBLE",
                     "temp_min": "DOUBLE", "wind": "DOUBLE", "weather": "VARCHAR"}  # fmt: skip
    result = assistant.sql("SELECT COUNT(*) FROM seattle_weather WHERE weather = 'snow'")
    assert result.rows == [(23,)]
    stocks = assistant.add_table(Path(weather.parent / "stocks.csv"), name="prices")[0]
    assert stocks.name == "prices" and {c.name for c in stocks.columns} == {
        "symbol",
        "date",
        "price",
    }


def test_excel_sheets_become_tables_with_chinese_columns(
    assistant: Assistant, tmp_path: Path
) -> None:
    book = make_xlsx(
        tmp_path / "公司.xlsx",
        {"员工": [["姓名", "职位", "工资"], ["王伟", "总经理", 50000], ["李娜", "工程师", 20000]],
         "Budget": [["Item", "Cost"], ["Laptop", 1200]]},
    )  # fmt: skip
    infos = assistant.add_table(book)
    assert sorted(i.name for i in infos) == ["公司_Budget", "公司_员工"]
    result = assistant.sql('SELECT "姓名" FROM "公司_员工" WHERE "职位" = \'总经理\'')
    assert result.rows == [("王伟",)]
    assert assistant.sql('SELECT SUM("工资") FROM "公司_员工"').rows == [(70000,)]


def test_connected_sqlite_database_is_listed_and_only_read(kb_home: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{CHINOOK}"
    listed = json.loads(
        runner.invoke(main, ["db", "connect", url, "--name", "chinook", "--json"]).stdout
    )
    assert {t["name"] for t in listed} >= {"Customer", "Invoice", "Track"}
    tables = json.loads(runner.invoke(main, ["tables", "--json"]).stdout)
    assert {t["source"] for t in tables} == {"chinook"}
    count = json.loads(
        runner.invoke(
            main, ["sql", "SELECT COUNT(*) FROM Track", "--db", "chinook", "--json"]
        ).stdout
    )
    assert count["rows"] == [[3503]] and count["truncated"] is False
    before = CHINOOK.read_bytes()
    refused = runner.invoke(main, ["sql", "DELETE FROM Track", "--db", "chinook"])
    assert refused.exit_code == EXIT_ERROR and "only SELECT queries are allowed" in refused.stderr
    assert CHINOOK.read_bytes() == before


def test_drop_and_clear_errors(assistant: Assistant, weather: Path) -> None:
    assistant.add_table(weather)
    assistant.drop_table("seattle_weather")
    assert assistant.tables() == []
    with pytest.raises(TableError, match="no table or database named 'nope'"):
        assistant.drop_table("nope")
    with pytest.raises(TableError, match=r"give sqlite:///path/to/file\.db or postgresql://"):
        assistant.connect_database("mysql://localhost/db", name="my")
    with pytest.raises(
        TableError, match=r"cannot connect to postgresql://kb:\*\*\*@127\.0\.0\.1:1/"
    ):
        assistant.connect_database("postgresql://kb:secret@127.0.0.1:1/db", name="pg")
    assert assistant.tables() == []  # nothing registered by a failed connect
    with pytest.raises(TableError, match=r"from \.csv, \.tsv or \.xlsx"):
        assistant.add_table(weather.parent / "cars.json")
    with pytest.raises(QueryRejected, match="unknown table"):
        assistant.sql("SELECT * FROM seattle_weather")


def test_a_damaged_workbook_is_a_clear_error(assistant: Assistant, tmp_path: Path) -> None:
    from kb_assistant.errors import CorruptDocument

    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(CorruptDocument, match=r"damaged or not an Excel \.xlsx file"):
        assistant.add_table(tmp_path / "broken.xlsx")
