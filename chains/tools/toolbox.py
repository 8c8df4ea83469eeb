"""The agent's four tools over one knowledge base: its documents, tables and databases.

Each tool is described once, by its method's docstring and type hints: that text is what a
function-calling model is given (``as_langchain``), and nothing else repeats it. Every query
goes through ``chains.tools.sql.run_query`` (validated, then run read-only); what the tools
return to a model is fenced as data (``chains.rag.fence``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from kb_assistant.chains.rag import fence
from kb_assistant.chains.tools.sql import (
    parse_one,
    run_query,
    sample_rows,
    table_aliases,
    tables_named,
    unqualified,
)
from kb_assistant.errors import KBError, QueryFailed, QueryRejected
from kb_assistant.vectorstore.databases import Database, QueryResult, TableInfo, quote_ident
from kb_assistant.vectorstore.knowledge_base import SearchHit
from kb_assistant.vectorstore.tables import TableRegistry

SHOWN_ROWS = 20  # rows of a result put into the model's context
EXAMPLE_TABLE_ROWS = 100  # list_tables shows example values of lookup tables this small
# How a year is read from a date column, said once in list_tables: the 1.5B model compared
# strftime('%Y', d) with the number 2011, which SQLite never finds equal (text vs integer),
# and wrote EXTRACT over PostgreSQL text columns. substr works on text in all three engines.
_DATE_TIPS = {
    "text": "dates are text like '2011-03-15 00:00:00': the year is substr(d, 1, 4) = '2011'",
    "duckdb": "the year of a date is year(d) = 2011",
    "postgres": "the year of a date is EXTRACT(YEAR FROM d) = 2011",
}
_TEXT = re.compile(r"char|text|string|clob", re.I)
# An engine's "unknown column" error: SQLite, PostgreSQL, DuckDB.
_NO_COLUMN = re.compile(
    r'no such column: ([\w.]+)|column "?([\w.]+)"? does not exist|column with name (\w+) does',
    re.I,
)


@dataclass(frozen=True)
class AgentLimits:
    """How far one question may go."""

    max_steps: int = 6  # tool calls
    max_seconds: float = 120.0
    row_cap: int = 200
    time_limit: float = 10.0


class AgentTools:
    """The tools over one knowledge base's documents, tables and databases."""

    def __init__(
        self,
        registry: TableRegistry,
        search: Callable[[str, int], list[SearchHit]] | None,
        limits: AgentLimits,
    ) -> None:
        self.registry = registry
        self.search = search  # None: the knowledge base has no documents
        self.limits = limits
        self._opened: dict[str, Database] = {}
        self._schemas: dict[str, list[TableInfo]] = {}
        self._listing: str | None = None  # list_tables, once per question

    # --- catalogue ------------------------------------------------------------------------

    def databases(self) -> list[str]:
        """Names of the places queries can go: 'tables' and connected databases."""
        return self.registry.databases()

    def database(self, name: str) -> Database:
        """A database by name, opened once per question."""
        if name not in self._opened:
            self._opened[name] = self.registry.database(name)
        return self._opened[name]

    def schema(self, name: str) -> list[TableInfo]:
        """The tables of a database, described once per question."""
        if name not in self._schemas:
            self._schemas[name] = self.database(name).describe()
        return self._schemas[name]

    def _find(self, table: str) -> tuple[str, TableInfo]:
        wanted = table.strip().strip('"')
        hint, _, name = wanted.rpartition(".")
        for database in self.databases():
            if hint and hint != database:
                continue
            for info in self.schema(database):
                if info.name.lower() == name.lower():
                    return database, info
        raise QueryRejected(f"no table named '{table}'; list_tables shows the tables")

    # --- the tools ------------------------------------------------------------------------

    def list_tables(self) -> str:
        """List every table of every database: row count, columns, and the links between
        tables (``AlbumId -> Album.AlbumId``) that joins follow."""
        if self._listing is None:  # the system prompt, each repair and the tool all read it
            self._listing = self._list_tables()
        return self._listing

    def _list_tables(self) -> str:
        blocks = []
        for database in self.databases():
            dialect = self.database(database).dialect
            columns = [c for t in self.schema(database) for c in t.columns]
            dated = [c for c in columns if "date" in f"{c.name} {c.type}".lower()]
            as_text = dialect == "sqlite" or any(_TEXT.search(c.type) for c in dated)
            tip = _DATE_TIPS["text" if as_text else dialect] if dated else ""
            tip = f"; {tip}" if tip else ""
            lines = [f"Database '{database}' ({dialect}{tip}):"]
            for t in self.schema(database):
                refs = {f.column: f"{f.ref_table}.{f.ref_column}" for f in t.foreign_keys}
                cols = ", ".join(
                    f"{c.name} -> {refs[c.name]}" if c.name in refs else c.name for c in t.columns
                )
                lines.append(f"- {t.name} ({t.rows} rows): {cols}{self._examples(database, t)}")
            blocks.append("\n".join(lines))
        return "\n".join(blocks) or "There are no tables or databases."

    def _examples(self, database: str, table: TableInfo) -> str:
        """A few values of a small lookup table's first text column (``e.g. Rock, Jazz, Metal``):
        they say what a lookup table holds ("music style" is Genre) in fewer tokens than
        sample rows."""
        text = next((c.name for c in table.columns if _TEXT.search(c.type)), None)
        small = 0 < table.rows <= EXAMPLE_TABLE_ROWS and len(table.columns) <= 3
        if text is None or not small:
            return ""
        column = quote_ident(text)
        sql = f"SELECT DISTINCT {column} FROM {quote_ident(table.name)} LIMIT 3"
        try:
            values = run_query(self.database(database), sql, time_limit=self.limits.time_limit)
        except KBError:
            return ""
        shown = ", ".join(cell_text(r[0]) for r in values.rows if r[0] is not None)
        return f" — {text} e.g. {shown}" if shown else ""

    def describe_table(self, table: str) -> tuple[str, QueryResult]:
        """Show one table's columns (types, keys), the tables linked to it, and its first 3
        rows; look before writing SQL."""
        database, info = self._find(table)
        keys = set(info.primary_key)
        refs = {f.column: f"{f.ref_table}.{f.ref_column}" for f in info.foreign_keys}
        lines = [f"table {database}.{info.name}, {info.rows} rows; columns:"]
        for c in info.columns:
            extra = " primary key" if c.name in keys else ""
            extra += f" references {refs[c.name]}" if c.name in refs else ""
            lines.append(f"- {c.name} {c.type}{extra}")
        incoming = [
            f"{t.name}.{f.column}"
            for t in self.schema(database)
            for f in t.foreign_keys
            if f.ref_table.lower() == info.name.lower()
        ]
        if incoming:
            lines.append(f"linked from (join on these to count or name): {', '.join(incoming)}")
        sample = sample_rows(self.database(database), info.name, 3)
        lines.append("sample rows:")
        lines += [row_text(sample.columns, r) for r in sample.rows]
        return fence("\n".join(lines)), sample

    def run_sql(self, sql: str, database: str = "") -> tuple[str, QueryResult]:
        """Run ONE read-only SELECT over the tables list_tables shows; database: where they
        are (optional: found from the tables the query names)."""
        name, sql = self._route(sql, database)
        try:
            result = run_query(
                self.database(name), sql, row_cap=self.limits.row_cap,
                time_limit=self.limits.time_limit,
            )  # fmt: skip
        except QueryFailed as exc:
            requalified = self._requalified(str(exc), sql, name)
            if requalified is None:
                hint = self._column_hint(str(exc), sql, name)
                raise QueryFailed(f"{exc}; {hint}" if hint else str(exc)) from exc
            result = requalified
        return fence(result_text(result)), result

    def _requalified(self, error: str, sql: str, database: str) -> QueryResult | None:
        """The query run again with a column's qualifier corrected, where the error names
        ``T2.LastName``, T2 has no LastName and exactly one other table of the query has it
        (the model swapped its aliases); None otherwise, or if that fails too."""
        from sqlglot import exp

        match = _NO_COLUMN.search(error)
        written = next((g for g in match.groups() if g), "") if match else ""
        qualifier, _, column = written.rpartition(".")
        dialect = self.database(database).dialect
        tree = parse_one(sql, dialect)
        if not qualifier or tree is None:
            return None
        schema = {t.name.lower(): t for t in self.schema(database)}
        owners = [
            alias for alias, table in table_aliases(sql, dialect).items()
            if table in schema and column.lower() in {c.name.lower() for c in schema[table].columns}
        ]  # fmt: skip
        if len(owners) != 1 or owners[0].lower() == qualifier.lower():
            return None
        for node in tree.find_all(exp.Column):
            if node.table.lower() == qualifier.lower() and node.name.lower() == column.lower():
                node.set("table", exp.to_identifier(owners[0]))
        try:
            fixed = tree.sql(dialect=dialect)
            limits = self.limits
            return run_query(self.database(database), fixed, row_cap=limits.row_cap,
                             time_limit=limits.time_limit)  # fmt: skip
        except KBError:
            return None

    def counting_alone(self, sql: str) -> str | None:
        """The problem of a query that counts rows of one table per group of one row: it
        groups by a column whose values are all different (or orders by ``COUNT`` without
        grouping) over a table that other tables link to, joining none of them. Its counts
        are all 1 (``... FROM Artist GROUP BY Name ORDER BY COUNT(*)`` for "the artist with
        the most albums"). None for any other query: ``COUNT(*) FROM Genre`` (how many
        genres) and ``... FROM Customer GROUP BY Country`` are fine."""
        from sqlglot import exp

        tree = parse_one(sql, "")
        named = tables_named(sql, "")
        if tree is None or len(named) != 1 or tree.find(exp.Count) is None:
            return None
        [table] = named
        group = tree.find(exp.Group)
        keys = [c.name for c in group.find_all(exp.Column)] if group is not None else []
        ordered = any(c.find_ancestor(exp.Order) for c in tree.find_all(exp.Count))
        if not keys and not (group is None and ordered):
            return None
        for database in self.databases():
            schema = self.schema(database)
            info = next((t for t in schema if t.name.lower() == table), None)
            links = [f"{t.name}.{f.column} -> {f.ref_table}.{f.ref_column}" for t in schema
                     for f in t.foreign_keys if f.ref_table.lower() == table]  # fmt: skip
            if info is None or not links:
                continue
            if keys and not self._unique(database, info.name, keys[0]):
                return None
            return (
                f"it counts the rows of {info.name} alone, one row per group, so every count "
                f"is 1; to count what belongs to each, join the table that links to it "
                f"({'; '.join(links)})"
            )
        return None

    def _unique(self, database: str, table: str, column: str) -> bool:
        """Whether every row of ``table`` has a different ``column`` value."""
        t, c = quote_ident(table), quote_ident(column)
        try:
            result = run_query(self.database(database), f"SELECT COUNT(*), COUNT(DISTINCT {c}) "
                               f"FROM {t}", time_limit=self.limits.time_limit)  # fmt: skip
        except KBError:
            return False
        total, distinct = result.rows[0]
        return bool(total) and total == distinct

    def _column_hint(self, error: str, sql: str, database: str) -> str:
        """For an unknown column: the column meant, where one is plain to see (``T1.LastName``
        when T2 has no LastName and T1 does; ``BillingCountry`` for ``Country``), the tables
        that have a column of that name and the links to join them, and the columns of the
        tables the query reads. Told only that a column does not exist, the 1.5B model sent
        the same query again."""
        match = _NO_COLUMN.search(error)
        if match is None:
            return ""
        written = next(g for g in match.groups() if g)
        missing = written.rpartition(".")[2]
        schema = {t.name.lower(): t for t in self.schema(database)}
        aliases = table_aliases(sql, self.database(database).dialect)  # alias or name -> table
        read = [schema[t] for t in dict.fromkeys(aliases.values()) if t in schema]

        def has(table: TableInfo, column: str) -> bool:
            return column.lower() in {c.name.lower() for c in table.columns}

        parts = []
        owners = [a for a, t in aliases.items() if t in schema and has(schema[t], missing)]
        lower = missing.lower()
        similar = [
            c.name for t in read for c in t.columns if lower in c.name.lower() or
            c.name.lower() in lower
        ]  # fmt: skip
        if owners:
            parts.append(f"did you mean {owners[0]}.{missing}")
        elif similar:
            parts.append(f"did you mean {' or '.join(dict.fromkeys(similar))}")
        holders = [t for t in schema.values() if has(t, missing) and t not in read]
        for holder in holders[:3]:
            links = [f"{t.name}.{f.column} -> {holder.name}.{f.ref_column}"
                     for t in read for f in t.foreign_keys
                     if f.ref_table.lower() == holder.name.lower()]  # fmt: skip
            links += [f"{holder.name}.{f.column} -> {f.ref_table}.{f.ref_column}"
                      for f in holder.foreign_keys
                      if f.ref_table.lower() in {t.name.lower() for t in read}]  # fmt: skip
            joined = f" (join it: {links[0]})" if links else ""
            parts.append(f"{missing} is a column of {holder.name}{joined}")
        if read:
            shown = "; ".join(f"{t.name} ({', '.join(c.name for c in t.columns)})" for t in read)
            parts.append(f"the tables the query reads have these columns: {shown}")
        return "; ".join(parts)

    def _route(self, sql: str, database: str) -> tuple[str, str]:
        """The database a query goes to, and the query without database qualifiers.

        A model often qualifies tables the way list_tables groups them (``db.Track``), which
        the engine would read as a schema, or names the wrong database: the tables the query
        names decide, among the databases that hold them all; ``database`` breaks a tie.
        """
        known = self.databases()
        if not known:
            raise QueryRejected("there are no tables or databases to query")
        named = tables_named(sql, "")
        holders = [d for d in known if named <= {t.name.lower() for t in self.schema(d)}]
        if database in holders or (database in known and not holders):
            name = database
        elif holders:
            name = holders[0]
        elif database:
            raise QueryRejected(f"no database named '{database}' (known: {', '.join(known)})")
        else:
            name = known[0]  # the validator names the unknown table
        return name, unqualified(sql, self.database(name).dialect, set(known), self.schema(name))

    def search_documents(self, query: str) -> tuple[str, list[SearchHit]]:
        """Find passages in the documents that answer a query, best first."""
        if self.search is None:
            return "The knowledge base has no documents.", []
        hits = self.search(query, 4)
        blocks = []
        for n, h in enumerate(hits, 1):
            where = f", page {h.chunk.page}" if h.chunk.page else ""
            blocks.append(f"[{n}] {h.chunk.name}{where}: {fence(h.chunk.text)}")
        return "\n\n".join(blocks) or "No passage matches.", hits

    def as_langchain(self) -> list[BaseTool]:
        """The tools for a LangChain agent, each described by its docstring (their results
        carry the raw rows and hits as artifacts): document search when there are documents,
        the table tools when there are tables."""
        offered: list[tuple[Callable[..., Any], bool]] = []
        if self.search is not None:
            offered.append((self.search_documents, True))
        if self.databases():
            offered += [(self.list_tables, False), (self.describe_table, True),
                        (self.run_sql, True)]  # fmt: skip
        tools: list[BaseTool] = []
        for method, artifact in offered:
            description = " ".join((inspect.getdoc(method) or "").split())
            tools.append(StructuredTool.from_function(
                method, name=method.__name__, description=description,
                response_format="content_and_artifact" if artifact else "content",
            ))  # fmt: skip
        return tools


def result_text(result: QueryResult) -> str:
    """A query result as the model and the user read it."""
    return rows_text(result.columns, result.rows, result.truncated)


def rows_text(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], truncated: bool = False
) -> str:
    """Columns and rows as lines of ``a | b``, the first ``SHOWN_ROWS`` of them."""
    lines = [" | ".join(columns)]
    lines += [row_text(None, r) for r in rows[:SHOWN_ROWS]]
    more = len(rows) - SHOWN_ROWS
    if more > 0:
        lines.append(f"... {more} more rows")
    if truncated:
        lines.append(f"(cut at {len(rows)} rows)")
    return "\n".join(lines)


def row_text(columns: Sequence[str] | None, row: Sequence[Any]) -> str:
    """One row as ``a | b`` (``col: a | col: b`` with ``columns``)."""
    cells = [cell_text(v) for v in row]
    if columns:
        return " | ".join(f"{c}: {v}" for c, v in zip(columns, cells, strict=False))
    return " | ".join(cells)


def cell_text(value: Any) -> str:
    """A value as an answer says it: no trailing zeros, nothing for NULL."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)
