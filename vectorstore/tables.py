"""Tables of a knowledge base: CSV/Excel/PDF files as DuckDB tables, and connected databases.

``<kb>/tables.duckdb`` holds the uploaded tables (one per CSV, one per Excel sheet, one per
bordered table of a PDF page; header row detected, column types inferred, Chinese column names
kept and quoted); ``<kb>/databases.json`` (mode 0600: a PostgreSQL URL may hold a password)
lists connected databases by name and SQLAlchemy-style URL: ``sqlite:///path/file.db`` or
``postgresql://user:pw@host:port/db``. Each is a ``vectorstore.databases.Database``; queries
reach them through ``chains.tools.sql`` (validated, then run read-only).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kb_assistant.errors import QueryRejected, TableError
from kb_assistant.vectorstore.databases import (
    INTERNAL_PREFIX,
    Database,
    DuckDBDatabase,
    PostgresDatabase,
    SQLiteDatabase,
    TableInfo,
    quote_ident,
    redact_url,
)
from kb_assistant.vectorstore.files import atomic_write_bytes

__all__ = ["TableInfo", "TableRegistry", "table_json", "table_name"]

TABLES_FILE = "tables.duckdb"
DATABASES_FILE = "databases.json"
MAX_TABLE_ROWS = 1_000_000
_NAME = re.compile(r"[^\w]+", re.UNICODE)
# A space between digit groups, as tables printed in PDFs write thousands ("1 234 567").
_DIGIT_GROUP = r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?:\D|$))"


def table_name(text: str) -> str:
    """A table name from a file or sheet name: letters (any script), digits and '_'."""
    name = _NAME.sub("_", text).strip("_") or "table"
    return f"t_{name}" if name[0].isdigit() else name


def _rows_of(path: Path) -> dict[str, list[list[str]]]:
    """Raw rows per sheet (one unnamed sheet for CSV; ``p<page>_t<n>`` for each table of a
    PDF), read as the document loaders read them."""
    from kb_assistant.loaders.tabular import read_csv_rows, read_xlsx_sheets

    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return {"": list(read_csv_rows(path))}
    if suffix == ".xlsx":
        return {title: list(rows) for title, rows in read_xlsx_sheets(path)}
    if suffix == ".pdf":
        return _pdf_rows(path)
    raise TableError(
        f"{path}: tables come from .csv, .tsv or .xlsx files, or the bordered tables of a .pdf "
        f"(got '{suffix}')"
    )


def _pdf_rows(path: Path) -> dict[str, list[list[str]]]:
    """The rows of each bordered table of a PDF, named ``p<page>_t<n>`` (n counts from 1 on
    each page, top to bottom)."""
    from kb_assistant.loaders.limits import inspect_pdf
    from kb_assistant.loaders.pdf_tables import find_tables

    inspect_pdf(path)  # the decompression limit of ingest, before pdfplumber inflates anything
    sheets: dict[str, list[list[str]]] = {}
    on_page: dict[int, int] = {}
    for table in find_tables(path):
        on_page[table.page] = on_page.get(table.page, 0) + 1
        sheets[f"p{table.page}_t{on_page[table.page]}"] = table.rows
    if not sheets:
        raise TableError(
            f"no tables found in {path} (only bordered tables, drawn with ruling lines, are "
            "detected)"
        )
    return sheets


def _frame(rows: list[list[str]], where: str, *, printed: bool = False) -> tuple[Any, bool]:
    """A typed DataFrame from raw rows: header detected, numbers and dates inferred.

    ``printed``: the rows of a table in a PDF, whose first row is always the header and
    whose numbers may group their digits with spaces.
    """
    import pandas as pd

    from kb_assistant.loaders.tabular import detect_header

    rows = [r for r in rows if any(str(v).strip() for v in r)]
    if not rows:
        raise TableError(f"{where}: no rows")
    width = max(len(r) for r in rows)
    first = [str(v).strip() for v in rows[0]]
    header = first if printed else detect_header(first)
    body = rows[1:] if header is not None else rows
    names = _column_names(header or [], width)
    truncated = len(body) > MAX_TABLE_ROWS
    body = [list(r) + [""] * (width - len(r)) for r in body[:MAX_TABLE_ROWS]]
    frame = pd.DataFrame(body, columns=names).replace({"": None})
    for column in frame.columns:
        frame[column] = _infer(frame[column], printed=printed)
    return frame, truncated


def _column_names(header: list[str], width: int) -> list[str]:
    names: list[str] = []
    for i in range(width):
        base = header[i].strip() if i < len(header) and header[i].strip() else f"column_{i + 1}"
        name, n = base, 2
        while name.lower() in (x.lower() for x in names):
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _infer(series: Any, *, printed: bool = False) -> Any:
    import pandas as pd

    values = series.dropna()
    if values.empty:
        return series
    numbers = pd.to_numeric(_number_text(values, printed), errors="coerce")
    if numbers.notna().all():
        converted = pd.to_numeric(_number_text(series, printed), errors="coerce")
        return converted.astype("Int64") if (numbers % 1 == 0).all() else converted
    if values.str.match(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?$").all():
        dates = pd.to_datetime(series, errors="coerce")
        if dates.notna().sum() == len(values):  # every value a real date, or keep the text
            return dates
    return series


def _number_text(series: Any, printed: bool) -> Any:
    """The cells without thousands separators (commas; in a PDF's tables, spaces too)."""
    text = series.str.replace(",", "", regex=False)
    return text.str.replace(_DIGIT_GROUP, "", regex=True) if printed else text


class TableRegistry:
    """The tables and connected databases of one knowledge base folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables_path = folder / TABLES_FILE

    # --- uploaded tables -------------------------------------------------------------------

    def add_file(self, path: Path, name: str | None = None) -> list[TableInfo]:
        """Load a CSV (one table), an Excel workbook (a table per sheet) or the bordered tables
        of a PDF (``<name>_p<page>_t<n>``, first row the header); replaces same names.

        Raises:
            TableError: unreadable file, no rows (a PDF: no tables), or an unsupported type.
            IngestError: a damaged, encrypted or hostile file.
        """
        import duckdb

        if not path.is_file():
            raise TableError(f"{path}: no such file")
        sheets = _rows_of(path)
        printed = path.suffix.lower() == ".pdf"
        base = table_name(name or path.stem)
        frames = []
        for sheet, rows in sheets.items():
            if not any(any(str(v).strip() for v in r) for r in rows):
                continue
            table = base if len(sheets) == 1 and not printed else table_name(f"{base}_{sheet}")
            where = f"{path}{f' [{sheet}]' if sheet else ''}"
            frames.append((table, *_frame(rows, where, printed=printed)))
        if not frames:
            raise TableError(f"{path}: every sheet is empty")
        with duckdb.connect(str(self.tables_path)) as db:
            db.execute("BEGIN")  # every sheet of the file, or none
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {INTERNAL_PREFIX}table_origin "
                "(name VARCHAR PRIMARY KEY, origin VARCHAR, truncated BOOLEAN)"
            )
            for table, frame, truncated in frames:
                db.register("incoming", frame)
                db.execute(
                    f"CREATE OR REPLACE TABLE {quote_ident(table)} AS SELECT * FROM incoming"
                )
                db.unregister("incoming")
                db.execute(
                    f"INSERT OR REPLACE INTO {INTERNAL_PREFIX}table_origin VALUES (?, ?, ?)",
                    [table, str(path.resolve()), truncated],
                )
            db.execute("COMMIT")
        added = {t for t, _, _ in frames}
        return [t for t in DuckDBDatabase(self.tables_path).describe() if t.name in added]

    def drop(self, name: str) -> None:
        """Remove an uploaded table or disconnect a database.

        Raises:
            TableError: nothing has that name.
        """
        databases = self._databases()
        if name in databases:
            del databases[name]
            self._save_databases(databases)
            return
        import duckdb

        if self.tables_path.is_file() and name in DuckDBDatabase(self.tables_path).tables():
            with duckdb.connect(str(self.tables_path)) as db:
                db.execute("BEGIN")
                db.execute(f"DROP TABLE {quote_ident(name)}")
                db.execute(f"DELETE FROM {INTERNAL_PREFIX}table_origin WHERE name = ?", [name])
                db.execute("COMMIT")
            return
        raise TableError(f"no table or database named '{name}'; 'kb tables' lists them")

    # --- connected databases ---------------------------------------------------------------

    def _databases(self) -> dict[str, str]:
        path = self.folder / DATABASES_FILE
        if not path.is_file():
            return {}
        data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def _save_databases(self, databases: dict[str, str]) -> None:
        data = json.dumps(databases, indent=2, ensure_ascii=False).encode()
        path = self.folder / DATABASES_FILE
        atomic_write_bytes(path, data)
        path.chmod(0o600)

    def connect(self, url: str, name: str) -> list[TableInfo]:
        """Register a database by URL under ``name`` (checked by connecting and describing it).

        Raises:
            TableError: an unsupported URL, a database that cannot be opened, or a name taken
                by an uploaded table.
        """
        name = table_name(name)
        if name == "tables":
            raise TableError("'tables' names the uploaded tables; choose another name")
        database = _open_database(url, name)
        try:
            described = database.describe()
        except (QueryRejected, OSError, sqlite3.DatabaseError) as exc:
            raise TableError(f"cannot use database '{name}': {exc}") from exc
        if isinstance(database, SQLiteDatabase):
            url = f"sqlite:///{database.path.resolve()}"
        databases = self._databases()
        databases[name] = url
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save_databases(databases)
        return described

    # --- listing ------------------------------------------------------------------------

    def databases(self) -> list[str]:
        """'tables' (if any were uploaded) and the name of every connected database."""
        return (["tables"] if self.tables_path.is_file() else []) + list(self._databases())

    def describe(self) -> list[TableInfo]:
        """Every uploaded table and every table of every connected database."""
        return [t for name in self.databases() for t in self.database(name).describe()]

    def database(self, name: str | None = None) -> Database:
        """The uploaded tables (``'tables'``) or a connected database, opened read-only.

        With no ``name``: the uploaded tables, or else the only connected database.
        """
        if name is None and not self.tables_path.is_file() and len(self._databases()) == 1:
            name = next(iter(self._databases()))
        if name in (None, "tables"):
            if not self.tables_path.is_file():
                raise TableError("no tables yet; add one with 'kb table add FILE.csv'")
            return DuckDBDatabase(self.tables_path)
        databases = self._databases()
        if name not in databases:
            known = ", ".join(self.databases()) or "none"
            raise TableError(f"no database named '{name}' (known: {known})")
        return _open_database(databases[name], name)


def _open_database(url: str, name: str) -> Database:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        try:
            return SQLiteDatabase(path, name)
        except QueryRejected as exc:
            raise TableError(f"cannot open {path} as a SQLite database ({exc})") from exc
    if url.split("://", maxsplit=1)[0].split("+", maxsplit=1)[0] in {"postgresql", "postgres"}:
        return PostgresDatabase(url, name)
    raise TableError(
        f"cannot connect '{redact_url(url)}': give sqlite:///path/to/file.db or "
        "postgresql://user:password@host:port/database"
    )


def table_json(info: TableInfo) -> dict[str, Any]:
    """A table's description as JSON (``source``: the same as ``database``, the key older
    versions wrote, kept for scripts that read it)."""
    return {**asdict(info), "source": info.database}
