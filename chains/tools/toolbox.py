"""The agent's four tools over one knowledge base: its documents, tables and databases.

Each tool is described once, by its method's docstring and type hints: that text is what a
function-calling model is given (``as_langchain``), and nothing else repeats it. Every query
goes through ``chains.tools.sql.run_query`` (validated, then run read-only); what the tools
return to a model is fenced as data (``chains.rag.fence``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from kb_assistant.chains.rag import fence
from kb_assistant.chains.tools.sql import run_query, sample_rows
from kb_assistant.errors import QueryRejected
from kb_assistant.vectorstore.databases import Database, QueryResult, TableInfo
from kb_assistant.vectorstore.knowledge_base import SearchHit
from kb_assistant.vectorstore.tables import TableRegistry

SHOWN_ROWS = 20  # rows of a result put into the model's context


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
        """List every table of every database, with its row count and columns."""
        lines = []
        for database in self.databases():
            for t in self.schema(database):
                cols = ", ".join(c.name for c in t.columns)
                lines.append(f"{database}.{t.name} ({t.rows} rows): {cols}")
        return "\n".join(lines) or "There are no tables or databases."

    def describe_table(self, table: str) -> tuple[str, QueryResult]:
        """Show one table's columns (types, keys) and its first 3 rows; look before writing
        SQL."""
        database, info = self._find(table)
        keys = set(info.primary_key)
        refs = {f.column: f"{f.ref_table}.{f.ref_column}" for f in info.foreign_keys}
        lines = [f"table {database}.{info.name}, {info.rows} rows; columns:"]
        for c in info.columns:
            extra = " primary key" if c.name in keys else ""
            extra += f" references {refs[c.name]}" if c.name in refs else ""
            lines.append(f"- {c.name} {c.type}{extra}")
        sample = sample_rows(self.database(database), info.name, 3)
        lines.append("sample rows:")
        lines += [row_text(sample.columns, r) for r in sample.rows]
        return fence("\n".join(lines)), sample

    def run_sql(self, sql: str, database: str = "") -> tuple[str, QueryResult]:
        """Run ONE read-only SELECT; database: 'tables' or a connected database's name
        (optional when there is only one)."""
        known = self.databases()
        name = database or (known[0] if len(known) == 1 else "tables")
        if name not in known:
            raise QueryRejected(
                f"no database named '{database}' (known: {', '.join(known) or 'none'})"
            )
        result = run_query(
            self.database(name), sql, row_cap=self.limits.row_cap,
            time_limit=self.limits.time_limit,
        )  # fmt: skip
        return fence(result_text(result)), result

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
        carry the raw rows and hits as artifacts)."""
        tools: list[BaseTool] = []
        for method, artifact in ((self.search_documents, True), (self.list_tables, False),
                                 (self.describe_table, True), (self.run_sql, True)):  # fmt: skip
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
