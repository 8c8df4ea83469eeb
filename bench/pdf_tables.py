"""Cell accuracy of PDF table extraction (``loaders.pdf_tables``) on generated tables.

Twenty bordered tables drawn by fpdf2 (2-8 columns, 3-30 rows of integers, decimals with
thousands separators, dates, English words, Chinese words and empty cells; wrapped cells; some
long enough to cross a page break, their header repeated on the next page), in three PDFs:
two in Helvetica (tables without Chinese; in one of them the tables are ruled only inside, with
no outer border), one in WenQuanYi Zen Hei. Each table's gold cells are
compared with the cells read, exactly: cell accuracy = exactly matching cells / gold cells, so
a table not found counts all its cells wrong. A table that crosses pages is found once per
page; the pieces are put back together (the repeated header dropped) before comparing, and
the pieces are counted too.

Usage: python -m bench.pdf_tables [--seed 18] [--record]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import record_entry
from kb_assistant.loaders.pdf_tables import PdfTable, find_tables, likely_tables
from tests.files import make_table_pdf

TABLES = 20
TARGET = 0.95
KINDS = ("integer", "decimal", "date", "english", "chinese")
ENGLISH = (
    "apple harbour invoice steel river copper garden ledger orbit maple signal basket "
    "thunder velvet quarry lantern meadow cobalt prairie summit anchor falcon"
).split()
CHINESE = (
    "苹果 港口 发票 钢铁 河流 铜矿 花园 账本 轨道 枫树 信号 篮子 雷声 丝绒 采石场 灯笼 "
    "草地 钴蓝 草原 山顶 锚地 猎鹰 北京市 上海浦东新区 人工智能研究所"
).split()
HEADERS = {
    "integer": ["Units", "Count", "Stock", "数量", "库存"],
    "decimal": ["Revenue", "Price", "Balance", "金额", "单价"],
    "date": ["Date", "Opened", "Due", "日期", "截止日期"],
    "english": ["Name", "Item", "Note", "Region", "Category"],
    "chinese": ["名称", "地区", "备注", "类别", "负责人"],
}


@dataclass
class GoldTable:
    """One generated table: its cells (first row the header) and the kind of each column."""

    rows: list[list[str]]
    kinds: list[str]
    pages: tuple[int, int] = (0, 0)
    on_pages: set[int] = field(default_factory=set)
    found: list[PdfTable] = field(default_factory=list)


def cell(kind: str, rng: random.Random) -> str:
    """One random value of a column kind."""
    if kind == "integer":
        return f"{rng.choice([rng.randint(0, 99), rng.randint(100, 99_999)]):,}"
    if kind == "decimal":
        return f"{rng.uniform(0, 999_999):,.2f}"
    if kind == "date":
        return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    words = ENGLISH if kind == "english" else CHINESE
    joiner = " " if kind == "english" else ""
    return joiner.join(rng.sample(words, rng.choice([1, 1, 2, 3])))


def make_table(rng: random.Random, rows: int, chinese: bool) -> GoldTable:
    """A table of ``rows`` data rows; Chinese words only when ``chinese``."""
    kinds = [k for k in KINDS if chinese or k != "chinese"]
    columns = rng.randint(2, 8)
    chosen = [rng.choice(kinds) for _ in range(columns)]
    header: list[str] = []
    for kind in chosen:
        names = [n for n in HEADERS[kind] if chinese or n.isascii()]
        name = rng.choice(names)
        header.append(name if name not in header else f"{name} {len(header) + 1}")
    body = [
        ["" if rng.random() < 0.08 else cell(kind, rng) for kind in chosen] for _ in range(rows)
    ]
    return GoldTable([header, *body], chosen)


def build(folder: Path, seed: int) -> dict[Path, list[GoldTable]]:
    """The three PDFs and the gold tables in each, in order."""
    rng = random.Random(seed)
    sizes = [3, 30, 5, 12, 8, 30, 4, 20, 6, 28, 3, 15, 9, 30, 7, 25, 10, 4, 18, 30]
    rng.shuffle(sizes)
    documents: dict[Path, list[GoldTable]] = {}
    for name, chinese, count, layout in (
        ("english.pdf", False, 6, "ALL"),
        ("ruled-inside.pdf", False, 2, "INTERNAL"),
        ("chinese.pdf", True, TABLES - 8, "ALL"),
    ):
        tables = [make_table(rng, sizes.pop(), chinese) for _ in range(count)]
        blocks: list[str | list[list[str]]] = []
        for number, table in enumerate(tables, start=1):
            intro = "下表列出第{n}组数据。" if chinese else "Table {n} lists the figures below."
            blocks += [intro.format(n=number), table.rows]
        spans = make_table_pdf(folder / name, blocks, borders_layout=layout)
        for table, pages in zip(tables, spans, strict=True):
            table.pages = pages
        documents[folder / name] = tables
    return documents


def assign(tables: list[GoldTable], found: list[PdfTable]) -> None:
    """Give each table found to the gold table on its page that shares the most cells."""
    for piece in found:
        candidates = [t for t in tables if t.pages[0] <= piece.page <= t.pages[1]]
        cells = {c for row in piece.rows for c in row if c}

        def shared(table: GoldTable, cells: set[str] = cells) -> int:
            return len(cells & {c for row in table.rows for c in row})

        best = max(candidates, key=shared, default=None)
        if best is not None and shared(best) > 0:
            best.found.append(piece)


def read_back(table: GoldTable) -> list[list[str]]:
    """The pieces of a table in page order, each later piece's repeated header dropped."""
    rows: list[list[str]] = []
    for piece in sorted(table.found, key=lambda p: (p.page, p.box[1])):
        body = piece.rows[1:] if rows and piece.rows[0] == table.rows[0] else piece.rows
        rows += body
    return rows


def score(table: GoldTable) -> tuple[int, int, dict[str, list[int]]]:
    """(exact cells, gold cells, per kind [exact, gold]); empty gold cells count as 'empty'."""
    got = read_back(table)
    exact = 0
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, row in enumerate(table.rows):
        for c, gold in enumerate(row):
            kind = "header" if r == 0 else ("empty" if not gold else table.kinds[c])
            ok = r < len(got) and c < len(got[r]) and got[r][c] == gold
            exact += ok
            kinds[kind][0] += ok
            kinds[kind][1] += 1
    return exact, sum(len(row) for row in table.rows), kinds


def locate(path: Path, tables: list[GoldTable]) -> None:
    """The pages each table really stands on (fpdf2 may move a whole table to the next page):
    those whose text holds one of its cells that no other table has."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        texts = {}
        for index in range(len(document)):
            textpage = document[index].get_textpage()
            texts[index + 1] = textpage.get_text_bounded()
            textpage.close()
    finally:
        document.close()
    for table in tables:
        others = {c for t in tables if t is not table for row in t.rows for c in row}
        own = {c for row in table.rows[1:] for c in row if len(c) >= 5} - others
        first, last = table.pages
        table.on_pages = {p for p in range(first, last + 1) if any(c in texts[p] for c in own)}


def gate_pages(path: Path) -> tuple[int, int, float]:
    """(pages, pages passing the PDFium gate, seconds of the gate alone)."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        pages = [document[i] for i in range(len(document))]
        start = time.perf_counter()
        passed = sum(likely_tables(page) for page in pages)
        return len(pages), passed, time.perf_counter() - start
    finally:
        document.close()


def main() -> None:
    """Build, extract, score, print (and record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        documents = build(Path(temp), args.seed)
        seconds = pages = gated = 0.0
        gate_seconds = 0.0
        for path, tables in documents.items():
            start = time.perf_counter()
            found = find_tables(path)
            seconds += time.perf_counter() - start
            n, passed, gate = gate_pages(path)
            pages, gated, gate_seconds = pages + n, gated + passed, gate_seconds + gate
            assign(tables, found)
            locate(path, tables)
    rows, totals, kinds = table_rows(documents)
    accuracy = totals[0] / totals[1]
    kind_line = ", ".join(f"{k} {v[0] / v[1]:.1%} of {v[1]}" for k, v in sorted(kinds.items()))
    record_entry(
        "PDF tables: cell accuracy", f"python -m bench.pdf_tables --seed {args.seed}", rows,
        [f"Cell accuracy {accuracy:.2%} ({totals[0]} of {totals[1]} cells; target "
         f"{TARGET:.0%}). By cell: {kind_line}.",
         f"{totals[2]} of {totals[3]} page pieces found ({totals[4]} tables cross a page).",
         f"Time: {seconds:.2f} s for {pages:.0f} pages ({seconds / pages * 1000:.0f} ms a page, "
         f"`find_tables`: PDFium gate, then pdfplumber on {gated:.0f} pages); the gate alone "
         f"{gate_seconds / pages * 1000:.2f} ms a page."],
        write=args.record,
    )  # fmt: skip
    if accuracy < TARGET:
        raise SystemExit(f"cell accuracy {accuracy:.2%} is under the target {TARGET:.0%}")


def table_rows(
    documents: dict[Path, list[GoldTable]],
) -> tuple[list[list[object]], list[int], dict[str, list[int]]]:
    """The result table (one row per gold table, then the total), the totals (exact cells,
    gold cells, pieces found, pieces expected, tables crossing a page) and per-kind counts."""
    rows: list[list[object]] = [
        ["file", "table", "pages", "columns", "rows", "pieces found", "cells", "exact", "accuracy"]
    ]
    totals = [0, 0, 0, 0, 0]
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path, tables in documents.items():
        for number, table in enumerate(tables, start=1):
            exact, cells, by_kind = score(table)
            first, last = min(table.on_pages), max(table.on_pages)
            totals = [totals[0] + exact, totals[1] + cells, totals[2] + len(table.found),
                      totals[3] + len(table.on_pages), totals[4] + (first != last)]  # fmt: skip
            for kind, (ok, count) in by_kind.items():
                kinds[kind][0] += ok
                kinds[kind][1] += count
            rows.append([path.name, number, f"{first}-{last}" if first != last else first,
                         len(table.rows[0]), len(table.rows) - 1, len(table.found), cells,
                         exact, f"{exact / cells:.1%}"])  # fmt: skip
    rows.append(["all", len(rows) - 1, "", "", "", f"{totals[2]} of {totals[3]}", totals[1],
                 totals[0], f"{totals[0] / totals[1]:.1%}"])  # fmt: skip
    return rows, totals, kinds


if __name__ == "__main__":
    main()
