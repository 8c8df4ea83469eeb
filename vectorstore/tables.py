"""Tables of a knowledge base: CSV/Excel files as DuckDB tables, and connected SQLite files.

``<kb>/tables.duckdb`` holds the uploaded tables (one per CSV, one per Excel sheet; header row
detected, column types inferred, Chinese column names kept and quoted); ``<kb>/databases.json``
lists connected databases by name and SQLAlchemy-style URL. Queries never run here: they go
through ``chains.tools.sql``, read-only.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from errors import QueryRejected, TableError
from vectorstore.files import atomic_write_bytes

if TYPE_CHECKING:
    from chains.tools.sql import DuckDBQueries, SQLiteQueries

TABLES_FILE = "tables.duckdb"
DATABASES_FILE = "databases.json"
MAX_TABLE_ROWS = 1_000_000
INTERNAL_PREFIX = "_kb_"  # bookkeeping tables, hidden from listings and from queries
_NAME = re.compile(r"[^\w]+", re.UNICODE)


@dataclass(frozen=True)
class Column:
    """A column and its SQL type."""

    name: str
    type: str


@dataclass(frozen=True)
class TableInfo:
    """One queryable table: where it lives and what it holds."""

    name: str
    source: str  # 'tables' (uploaded) or a connected database's name
    columns: list[Column]
    rows: int
    origin: str = ""  # the file it came from, for uploads
    truncated: bool = False


def table_name(text: str) -> str:
    """A table name from a file or sheet name: letters (any script), digits and '_'."""
    name = _NAME.sub("_", text).strip("_") or "table"
    return f"t_{name}" if name[0].isdigit() else name


def _rows_of(path: Path) -> dict[str, list[list[str]]]:
    """Raw rows per sheet (one unnamed sheet for CSV), read as the document loaders read them."""
    from loaders.tabular import read_csv_rows, read_xlsx_sheets

    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return {"": list(read_csv_rows(path))}
    if suffix == ".xlsx":
        return {title: list(rows) for title, rows in read_xlsx_sheets(path)}
    raise TableError(f"{path}: tables come from .csv, .tsv or .xlsx files (got '{suffix}')")


def _frame(rows: list[list[str]], where: str) -> tuple[Any, bool]:
    """A typed DataFrame from raw rows: header detected, numbers and dates inferred."""
    import pandas as pd

    from loaders.tabular import detect_header

    rows = [r for r in rows if any(str(v).strip() for v in r)]
    if not rows:
        raise TableError(f"{where}: no rows")
    width = max(len(r) for r in rows)
    header = detect_header([str(v).strip() for v in rows[0]])
    body = rows[1:] if header is not None else rows
    names = _column_names(header or [], width)
    truncated = len(body) > MAX_TABLE_ROWS
    body = [list(r) + [""] * (width - len(r)) for r in body[:MAX_TABLE_ROWS]]
    frame = pd.DataFrame(body, columns=names).replace({"": None})
    for column in frame.columns:
        frame[column] = _infer(frame[column])
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


def _infer(series: Any) -> Any:
    import pandas as pd

    values = series.dropna()
    if values.empty:
        return series
    numbers = pd.to_numeric(values.str.replace(",", "", regex=False), errors="coerce")
    if numbers.notna().all():
        converted = pd.to_numeric(series.str.replace(",", "", regex=False), errors="coerce")
        return converted.astype("Int64") if (numbers % 1 == 0).all() else converted
    if values.str.match(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?$").all():
        dates = pd.to_datetime(series, errors="coerce")
        if dates.notna().sum() == len(values):  # every value a real date, or keep the text
            return dates
    return series


class TableRegistry:
    """The tables and connected databases of one knowledge base folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables_path = folder / TABLES_FILE

    # --- uploaded tables -------------------------------------------------------------------

    def add_file(self, path: Path, name: str | None = None) -> list[TableInfo]:
        """Load a CSV (one table) or Excel workbook (a table per sheet); replaces same names.

        Raises:
            TableError: unreadable file, no rows, or an unsupported type.
        """
        import duckdb

        if not path.is_file():
            raise TableError(f"{path}: no such file")
        sheets = _rows_of(path)
        base = table_name(name or path.stem)
        added: list[TableInfo] = []
        with duckdb.connect(str(self.tables_path)) as db:
            for sheet, rows in sheets.items():
                if not any(any(str(v).strip() for v in r) for r in rows):
                    continue
                table = base if len(sheets) == 1 else table_name(f"{base}_{sheet}")
                frame, truncated = _frame(rows, f"{path}{f' [{sheet}]' if sheet else ''}")
                db.register("incoming", frame)
                db.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM incoming')
                db.unregister("incoming")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS _kb_table_origin (name VARCHAR PRIMARY KEY, "
                    "origin VARCHAR, truncated BOOLEAN)"
                )
                db.execute(
                    "INSERT OR REPLACE INTO _kb_table_origin VALUES (?, ?, ?)",
                    [table, str(path.resolve()), truncated],
                )
                added.append(self._describe(db, table, "tables"))
        if not added:
            raise TableError(f"{path}: every sheet is empty")
        return added

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

        if self.tables_path.is_file():
            with duckdb.connect(str(self.tables_path)) as db:
                if name in self._table_names(db):
                    db.execute(f'DROP TABLE "{name}"')
                    db.execute("DELETE FROM _kb_table_origin WHERE name = ?", [name])
                    return
        raise TableError(f"no table or database named '{name}'; 'kb tables' lists them")

    @staticmethod
    def _table_names(db: Any) -> list[str]:
        rows = db.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()
        return [r[0] for r in rows if not r[0].startswith(INTERNAL_PREFIX)]

    def _describe(self, db: Any, table: str, source: str) -> TableInfo:
        columns = [Column(c[0], str(c[1])) for c in db.execute(f'DESCRIBE "{table}"').fetchall()]
        # fetchall: DuckDB refuses new work on a connection with a half-read result.
        rows = int(db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchall()[0][0])
        found = db.execute(
            "SELECT origin, truncated FROM _kb_table_origin WHERE name = ?", [table]
        ).fetchall()
        origin = found[0] if found else None
        return TableInfo(
            table, source, columns, rows, origin[0] if origin else "", bool(origin and origin[1])
        )

    # --- connected databases ---------------------------------------------------------------

    def _databases(self) -> dict[str, str]:
        path = self.folder / DATABASES_FILE
        if not path.is_file():
            return {}
        data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def _save_databases(self, databases: dict[str, str]) -> None:
        data = json.dumps(databases, indent=2, ensure_ascii=False).encode()
        atomic_write_bytes(self.folder / DATABASES_FILE, data)

    def connect(self, url: str, name: str) -> list[TableInfo]:
        """Register a database by URL (``sqlite:///path/to/file.db``) under ``name``.

        Raises:
            TableError: an unsupported URL, a missing or invalid file, or a taken name.
        """
        from chains.tools.sql import SQLiteQueries

        name = table_name(name)
        if not url.startswith("sqlite:///"):
            raise TableError(
                f"cannot connect '{url}': this version connects SQLite files "
                "(sqlite:///path/to/file.db); PostgreSQL is not supported yet"
            )
        path = Path(url.removeprefix("sqlite:///")).expanduser().resolve()
        try:
            tables = SQLiteQueries(path).tables()
        except (QueryRejected, OSError, sqlite3.DatabaseError) as exc:
            raise TableError(f"cannot open {path} as a SQLite database ({exc})") from exc
        databases = self._databases()
        databases[name] = f"sqlite:///{path}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save_databases(databases)
        return self._describe_sqlite(path, name, sorted(tables))

    @staticmethod
    def _describe_sqlite(path: Path, source: str, tables: list[str]) -> list[TableInfo]:
        import sqlite3
        from urllib.parse import quote

        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            out = []
            for table in tables:
                quoted = table.replace('"', '""')
                columns = [
                    Column(r[1], r[2] or "") for r in db.execute(f'PRAGMA table_info("{quoted}")')
                ]
                rows = int(db.execute(f'SELECT COUNT(*) FROM "{quoted}"').fetchone()[0])
                out.append(TableInfo(table, source, columns, rows))
            return out
        finally:
            db.close()

    # --- listing ------------------------------------------------------------------------

    def describe(self) -> list[TableInfo]:
        """Every uploaded table and every table of every connected database."""
        import duckdb

        out: list[TableInfo] = []
        if self.tables_path.is_file():
            with duckdb.connect(str(self.tables_path), read_only=True) as db:
                out += [self._describe(db, t, "tables") for t in self._table_names(db)]
        for name, url in self._databases().items():
            from chains.tools.sql import SQLiteQueries

            path = Path(url.removeprefix("sqlite:///"))
            out += self._describe_sqlite(path, name, sorted(SQLiteQueries(path).tables()))
        return out

    def queries(self, source: str | None = None) -> DuckDBQueries | SQLiteQueries:
        """The read-only query runner for the uploaded tables or a connected database."""
        from chains.tools.sql import DuckDBQueries, SQLiteQueries

        if source in (None, "tables"):
            if not self.tables_path.is_file():
                raise TableError("no tables yet; add one with 'kb table add FILE.csv'")
            return DuckDBQueries(self.tables_path)
        databases = self._databases()
        if source not in databases:
            known = ", ".join(["tables", *databases]) or "none"
            raise TableError(f"no database named '{source}' (known: {known})")
        return SQLiteQueries(Path(databases[source].removeprefix("sqlite:///")))


def table_json(info: TableInfo) -> dict[str, Any]:
    """A table's description as JSON."""
    return asdict(info)
