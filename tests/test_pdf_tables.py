"""Bordered tables in PDFs: found by pdfplumber behind the PDFium gate, and added as SQL tables
by ``kb table add`` (PDFs drawn by fpdf2's ``FPDF.table``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kb_assistant.cli import EXIT_ERROR, main
from kb_assistant.errors import CorruptDocument, EncryptedDocument
from kb_assistant.loaders.pdf_tables import (
    PdfTable,
    find_tables,
    inside,
    likely_tables,
    to_markdown,
)
from tests.files import (
    CJK_FONT,
    PAGE_BREAK,
    deflate_bomb,
    make_encrypted_pdf,
    make_raw_pdf,
    make_table_pdf,
)

SALES = [
    ["Region", "Units", "Revenue", "Opened"],
    ["North", "1,234", "1,234.50", "2021-03-01"],
    ["South", "87", "12,000.00", "2019-11-15"],
    ["East", "1 500", "0.75", ""],
    ["West", "", "310.25", "2024-01-31"],
]
CITIES = [
    ["城市", "人口（万）", "备注"],
    ["北京", "2,189", "首都，中华人民共和国的政治文化中心，也是一座历史悠久的城市，有许多名胜古迹"],
    ["上海", "2,487", "经济中心"],
    ["深圳", "1,768", ""],
]
PROSE = "Quarterly report. The figures below are unaudited and may change."


def kb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def page_gate(path: Path, number: int) -> bool:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return likely_tables(document[number - 1])
    finally:
        document.close()


@pytest.fixture
def sales_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "sales report.pdf"
    make_table_pdf(path, [PROSE, SALES, "Totals are in euros."])
    return path


def test_an_english_table_is_read_cell_for_cell(sales_pdf: Path) -> None:
    [table] = find_tables(sales_pdf)
    assert table.page == 1 and table.rows == SALES
    x0, y0, x1, y1 = table.box
    # fpdf2's margins are 10 mm of the 210 x 297 mm page; a paragraph stands above the table.
    assert x0 == pytest.approx(10 / 210, abs=0.002) and x1 == pytest.approx(200 / 210, abs=0.002)
    assert 0.04 < y0 < 0.1 and 0.1 < y1 < 0.3 and y1 - y0 > 0.05
    assert page_gate(sales_pdf, 1) is True


def test_a_chinese_table_keeps_its_cells_and_joins_wrapped_lines(tmp_path: Path) -> None:
    if not CJK_FONT.is_file():
        pytest.skip(f"needs the WenQuanYi font at {CJK_FONT}")
    path = tmp_path / "城市.pdf"
    make_table_pdf(path, ["人口统计", CITIES])
    [table] = find_tables(path)
    # The long remark wraps over two lines in its cell; Chinese lines join without a space.
    assert table.rows == CITIES and table.page == 1


def test_a_table_on_page_two_of_two(tmp_path: Path) -> None:
    path = tmp_path / "two.pdf"
    make_table_pdf(path, [PROSE * 5, PAGE_BREAK, "The table:", SALES[:3]])
    assert page_gate(path, 1) is False and page_gate(path, 2) is True
    [table] = find_tables(path)
    assert table.page == 2 and table.rows == SALES[:3]
    assert find_tables(path, pages=[1]) == [] and find_tables(path, pages=[2, 9]) == [table]


def test_a_page_of_text_has_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "plain.pdf"
    make_table_pdf(path, [PROSE * 20])
    assert page_gate(path, 1) is False
    assert find_tables(path) == []


def test_a_table_ruled_only_inside_keeps_its_outer_rows_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "internal.pdf"
    make_table_pdf(path, [PROSE, [row[:3] for row in SALES]], borders_layout="INTERNAL")
    assert page_gate(path, 1) is True
    [table] = find_tables(path)
    assert table.rows == [row[:3] for row in SALES]


def test_a_frame_and_rules_are_not_a_table(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=10)
    pdf.rect(10, 20, 190, 40)  # a framed note
    pdf.set_xy(12, 22)
    pdf.multi_cell(180, 6, PROSE * 3)
    for y in (80, 120, 160):  # rules between sections
        pdf.line(10, y, 200, y)
    pdf.output(str(tmp_path / "framed.pdf"))
    assert page_gate(tmp_path / "framed.pdf", 1) is False


def test_a_damaged_pdf_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 nope")
    with pytest.raises(CorruptDocument, match=r"bad\.pdf: damaged or not a PDF"):
        find_tables(tmp_path / "bad.pdf")


def test_an_encrypted_pdf_is_a_clear_error(tmp_path: Path) -> None:
    path = make_encrypted_pdf(tmp_path / "locked.pdf", "secret figures")
    with pytest.raises(EncryptedDocument, match=r"locked\.pdf: encrypted PDF"):
        find_tables(path)


def test_markdown_escapes_pipes_and_pads_ragged_rows() -> None:
    rows = [["Name", "Note", "n"], ["a|b", "two\nlines"], ["c", "", "3"]]
    assert to_markdown(rows) == (
        "| Name | Note | n |\n| --- | --- | --- |\n| a\\|b | two lines |  |\n| c |  | 3 |"
    )
    assert to_markdown([]) == ""


def test_markdown_of_a_found_table(sales_pdf: Path) -> None:
    [table] = find_tables(sales_pdf)
    assert to_markdown(table.rows).splitlines()[:3] == [
        "| Region | Units | Revenue | Opened |",
        "| --- | --- | --- | --- |",
        "| North | 1,234 | 1,234.50 | 2021-03-01 |",
    ]


def test_inside_allows_a_small_tolerance() -> None:
    table = (0.1, 0.2, 0.9, 0.5)
    assert inside((0.2, 0.25, 0.5, 0.27), table)
    assert inside((0.097, 0.198, 0.903, 0.3), table)  # within 0.005 of the border
    assert not inside((0.2, 0.49, 0.5, 0.52), table)  # runs out at the bottom
    assert not inside((0.05, 0.3, 0.5, 0.32), table)  # starts left of the table


def test_pdf_table_is_a_frozen_value() -> None:
    table = PdfTable(page=1, rows=[["a", "b"], ["1", "2"]], box=(0.0, 0.0, 1.0, 1.0))
    with pytest.raises(AttributeError):
        table.page = 2  # type: ignore[misc]


# --- kb table add --------------------------------------------------------------------------


def test_kb_table_add_registers_each_table_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    make_table_pdf(path, [PROSE, SALES, "More text.", SALES[:3], PAGE_BREAK, SALES[:2]])
    added = kb("table", "add", str(path), "--json")
    assert added.exit_code == 0, added.output
    infos = json.loads(added.stdout)
    assert [(i["name"], i["rows"]) for i in infos] == [
        ("report_p1_t1", 4),
        ("report_p1_t2", 2),
        ("report_p2_t1", 1),
    ]
    types = {c["name"]: c["type"] for c in infos[0]["columns"]}
    assert types == {"Region": "VARCHAR", "Units": "BIGINT", "Revenue": "DOUBLE",
                     "Opened": "TIMESTAMP"}  # fmt: skip
    total = kb("sql", "SELECT SUM(Units), SUM(Revenue) FROM report_p1_t1", "--json")
    assert json.loads(total.stdout)["rows"] == [
        [1234 + 87 + 1500, 1234.50 + 12000.00 + 0.75 + 310.25]
    ]
    human = kb("table", "add", str(path), "--name", "q3")
    assert human.exit_code == 0 and "tables.q3_p1_t1  4 rows" in human.stdout


def test_kb_table_add_a_chinese_table(tmp_path: Path) -> None:
    if not CJK_FONT.is_file():
        pytest.skip(f"needs the WenQuanYi font at {CJK_FONT}")
    path = tmp_path / "人口.pdf"
    make_table_pdf(path, [CITIES])
    [info] = json.loads(kb("table", "add", str(path), "--json").stdout)
    assert info["name"] == "人口_p1_t1"
    total = kb("sql", 'SELECT SUM("人口（万）") FROM "人口_p1_t1"', "--json")
    assert json.loads(total.stdout)["rows"] == [[2189 + 2487 + 1768]]


def test_kb_table_add_a_pdf_without_tables_stores_nothing(tmp_path: Path, kb_home: Path) -> None:
    path = tmp_path / "notes.pdf"
    make_table_pdf(path, [PROSE * 10])
    result = kb("table", "add", str(path))
    assert result.exit_code == EXIT_ERROR
    [line] = result.stderr.strip().splitlines()
    assert f"no tables found in {path}" in line and "bordered tables" in line
    assert json.loads(kb("tables", "--json").stdout) == []
    assert not list(kb_home.rglob("tables.duckdb"))


def test_kb_table_add_refuses_a_pdf_bomb_before_parsing_it(tmp_path: Path) -> None:
    path = make_raw_pdf(tmp_path / "bomb.pdf", b"", compressed=deflate_bomb(128 << 20))
    result = kb("table", "add", str(path), "--json")
    assert result.exit_code == EXIT_ERROR
    assert json.loads(result.stdout)["type"] == "HostileDocument"
    assert "decompression limit" in result.stderr
