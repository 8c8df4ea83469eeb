"""CSV and Excel: each row becomes a line of "column: value" pairs, so a chunk of rows keeps
the meaning of its columns. Sheet names are kept; rows past the cap are truncated and noted."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from kb_assistant.errors import CorruptDocument, EmptyDocument
from kb_assistant.loaders.base import LoadContext, Section
from kb_assistant.loaders.encoding import detect_encoding

ROWS_PER_SECTION = 200


def read_csv_rows(path: Path) -> Iterator[list[str]]:
    """Rows of a CSV/TSV file: encoding detected, delimiter sniffed, streamed.

    Raises:
        CorruptDocument: the file is not well-formed CSV.
    """
    encoding = detect_encoding(path)
    with path.open("r", encoding=encoding, errors="replace", newline="") as fh:
        sample = fh.read(64 * 1024)
        fh.seek(0)
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
                sample, delimiters=",;\t|"
            )
        except csv.Error:
            dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
        try:
            yield from csv.reader(fh, dialect)
        except csv.Error as exc:
            raise CorruptDocument(f"{path}: malformed CSV ({exc})") from exc


def read_xlsx_sheets(path: Path) -> Iterator[tuple[str, Iterator[list[str]]]]:
    """``(sheet name, rows)`` for every sheet of a workbook, cells as text, streamed.

    Raises:
        CorruptDocument: the file is not a readable .xlsx workbook.
    """
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise CorruptDocument(f"{path}: damaged or not an Excel .xlsx file ({exc})") from exc
    try:
        for sheet in workbook.worksheets:
            rows = (
                ["" if v is None else str(v) for v in row]
                for row in sheet.iter_rows(values_only=True)
            )
            yield sheet.title, rows
    finally:
        workbook.close()


def load_csv(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream a CSV/TSV file, delimiter sniffed, encoding detected."""
    yield from _rows_to_sections(read_csv_rows(path), None, ctx, str(path))


def load_xlsx(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream every sheet of an Excel workbook; each sheet keeps its name."""
    found = False
    for title, rows in read_xlsx_sheets(path):
        for section in _rows_to_sections(rows, title, ctx, str(path)):
            found = True
            yield section
    if not found:
        raise EmptyDocument(f"{path}: every sheet is empty")


def _rows_to_sections(
    rows: Iterator[Sequence[str]], sheet: str | None, ctx: LoadContext, where: str
) -> Iterator[Section]:
    header: list[str] | None = None
    lines: list[str] = []
    count = 0
    for raw in rows:
        row = [str(v).strip() for v in raw]
        if not any(row):
            continue
        if header is None:
            header = detect_header(row)
            if header is not None:
                continue
            header = [f"column {i + 1}" for i in range(len(row))]
        if count >= ctx.max_rows:
            ctx.note(f"truncated: only the first {ctx.max_rows} rows of {sheet or where} indexed")
            break
        count += 1
        lines.append(_format_row(header, row))
        if len(lines) >= ROWS_PER_SECTION:
            yield Section("\n".join(lines), sheet=sheet)
            lines = []
    if lines:
        yield Section("\n".join(lines), sheet=sheet)


def detect_header(row: list[str]) -> list[str] | None:
    """The first non-empty row is a header when every cell is text and none is a number."""
    cells = [c for c in row if c]
    if cells and all(not _is_number(c) for c in cells):
        return [c or f"column {i + 1}" for i, c in enumerate(row)]
    return None


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
    except ValueError:
        return False
    return True


def _format_row(header: list[str], row: list[str]) -> str:
    pairs = []
    for i, value in enumerate(row):
        if not value:
            continue
        name = header[i] if i < len(header) else f"column {i + 1}"
        pairs.append(f"{name}: {value}")
    return "; ".join(pairs)
