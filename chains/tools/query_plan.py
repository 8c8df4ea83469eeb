"""Questions to SQL for small models: the system links, the model fills slots, the system writes.

A 135M-parameter model cannot write SQL, but it can pick one item from a short list. So:

1. **Linking** (deterministic, for any schema and any question): table and column names
   mentioned in the question (split at camelCase and ``_``, singular or plural, any script),
   values of short text columns that occur in it verbatim ("Brazil" → ``Customer.Country``),
   years (→ the year of a date column), and cue words in English and Chinese for counting,
   summing, averages, superlatives and "which …" questions.
2. **A form** (a JSON schema): one slot per decision — base table, aggregation, measure,
   grouping, order, limit, and for each linked value which column it belongs to — each an
   enum of the choices the links leave open; a slot with one choice is a constant. llama.cpp
   turns the schema into a grammar, so the model's output always parses and always names real
   tables and columns.
3. **Compiling**: the filled form becomes one SELECT with quoted identifiers in the right
   dialect; the joins are added along foreign keys (declared or inferred), by the shortest path
   from the base table to every other table the form names.

Nothing here knows any particular database or question.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kb_assistant.chains.tools.sql import run_query
from kb_assistant.errors import QueryRejected
from kb_assistant.vectorstore.databases import Database, TableInfo, quote_ident, quote_literal

AGGREGATIONS = ("count", "sum", "avg", "min", "max", "none")
MAX_DISTINCT = 1000  # text columns with more distinct values are not scanned for mentions
_NUMERIC = re.compile(r"INT|NUMERIC|DECIMAL|REAL|DOUBLE|FLOAT|MONEY|NUMBER|HUGEINT", re.I)
_DATE_TYPE = re.compile(r"DATE|TIME", re.I)
_DATE_VALUE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_CJK = re.compile(r"[\u3400-\u9fff]")
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")

_CUES: dict[str, tuple[str, ...]] = {
    "count": ("how many", "number of", "count", "多少个", "有多少", "几个", "几位", "几张", "数量",
              "个数"),
    "sum": ("total", "sum", "revenue", "总额", "总和", "合计", "总计", "总共", "总收入", "收入"),
    "avg": ("average", "mean", "avg", "平均"),
    "max": ("highest", "largest", "biggest", "maximum", "longest", "top", "best",
            "greatest", "最高", "最大", "最长", "最贵"),
    "min": ("lowest", "smallest", "minimum", "shortest", "cheapest", "最低", "最小", "最短",
            "最便宜"),
    # Superlatives of quantity: "the most albums" ranks by how many rows there are.
    "most": ("most", "最多"),
    "fewest": ("fewest", "least", "最少"),
    "which": ("which", "what", "who", "哪", "什么", "谁"),
    "year": ("year", "年"),
    "month": ("month", "月"),
}  # fmt: skip


_AGGREGATING = {"count", "sum", "avg", "max", "min", "most", "fewest"}


def _words(text: str) -> list[str]:
    """Lower-case words of English-like text, singular."""
    return [_singular(w) for w in re.findall(r"[a-z0-9]+", text.lower())]


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _name_words(name: str) -> list[str]:
    """``MediaTypeId`` → ['media', 'type', 'id']; ``unit_price`` → ['unit', 'price']."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return _words(spaced.replace("_", " "))


def _find_phrase(words: list[str], phrase: list[str]) -> int:
    """Position of ``phrase`` in ``words``, or -1."""
    n = len(phrase)
    for i in range(len(words) - n + 1):
        if words[i : i + n] == phrase:
            return i
    return -1


def _drop_words(text: str, words: set[str]) -> str:
    """``text`` without the given (singular, lower-case) words: a column named "Total" is a
    column, not the cue word "total"."""
    if not words:
        return text
    return re.sub(r"[A-Za-z0-9]+", lambda m: "" if _singular(m.group().lower()) in words
                  else m.group(), text)  # fmt: skip


def _has_cue(question: str, kind: str) -> bool:
    low = question.lower()
    for cue in _CUES[kind]:
        if _CJK.search(cue):
            if cue in question:
                return True
        elif re.search(rf"(?<![a-z]){re.escape(cue)}(?![a-z])", low):
            return True
    return False


@dataclass(frozen=True)
class ColumnRef:
    """``table.column``, with what the planner needs to know about it."""

    table: str
    column: str
    numeric: bool = False
    date: bool = False
    key: bool = False

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass
class Links:
    """What a question mentions of one database's schema."""

    tables: list[str] = field(default_factory=list)  # in order of mention
    columns: list[ColumnRef] = field(default_factory=list)
    values: list[tuple[str, list[ColumnRef]]] = field(default_factory=list)  # text → columns
    years: list[int] = field(default_factory=list)
    cues: set[str] = field(default_factory=set)
    counted: str | None = None  # "the most albums": the table whose rows are counted

    @property
    def strength(self) -> int:
        """How much of the schema the question names (0: nothing, route elsewhere)."""
        return 2 * len(self.tables) + len(self.columns) + 3 * len(self.values)


@dataclass
class Form:
    """The slots a model fills: a JSON schema, and the choices behind each enum."""

    schema: dict[str, Any]
    links: Links
    fixed: dict[str, Any]  # slots with a single choice (constants in the schema)


class QueryPlanner:
    """Links questions to one database's schema, builds the form, compiles filled forms."""

    def __init__(self, database: Database, tables: list[TableInfo]) -> None:
        self.database = database
        self.tables = {t.name: t for t in tables}
        self.columns: dict[str, list[ColumnRef]] = {}
        self._values: list[tuple[str, ColumnRef]] = []
        for t in tables:
            keys = {c.lower() for c in t.primary_key} | {f.column.lower() for f in t.foreign_keys}
            refs = []
            for c in t.columns:
                numeric = bool(_NUMERIC.search(c.type))
                refs.append(ColumnRef(t.name, c.name, numeric, bool(_DATE_TYPE.search(c.type)),
                                      c.name.lower() in keys))  # fmt: skip
            self.columns[t.name] = refs
        self._scan_values()

    # --- schema facts ---------------------------------------------------------------------

    def _scan_values(self) -> None:
        """Distinct short text values (for mentions) and text columns that hold dates."""
        for table, refs in self.columns.items():
            for i, ref in enumerate(refs):
                if ref.numeric or ref.key or ref.date:
                    continue
                col = quote_ident(ref.column)
                try:
                    result = run_query(
                        self.database,
                        f"SELECT DISTINCT {col} FROM {quote_ident(table)} WHERE {col} IS NOT NULL "
                        f"LIMIT {MAX_DISTINCT + 1}",
                        row_cap=MAX_DISTINCT + 1,
                    )
                except QueryRejected:
                    continue
                values = [str(r[0]) for r in result.rows if isinstance(r[0], str)]
                if values and all(_DATE_VALUE.match(v) for v in values[:20]):
                    refs[i] = ColumnRef(table, ref.column, False, True, False)
                    continue
                if len(result.rows) > MAX_DISTINCT:
                    continue
                self._values += [(v, ref) for v in values if 2 <= len(v.strip()) <= 60]

    def label_columns(self, table: str) -> list[ColumnRef]:
        """The columns that name a row: ``*name*``, else ``*title*``, else the first text one."""
        text = [c for c in self.columns[table] if not (c.numeric or c.key or c.date)]
        for word in ("name", "title"):
            named = [c for c in text if word in c.column.lower()]
            if named:
                return named
        return text[:1] or self.columns[table][:1]

    def _graph(self) -> dict[str, list[tuple[str, str, str]]]:
        """table → [(neighbour, my column, its column)] along foreign keys, both directions."""
        graph: dict[str, list[tuple[str, str, str]]] = {t: [] for t in self.tables}
        for t in self.tables.values():
            for fk in t.foreign_keys:
                if fk.ref_table in graph:
                    graph[t.name].append((fk.ref_table, fk.column, fk.ref_column))
                    graph[fk.ref_table].append((t.name, fk.ref_column, fk.column))
        return graph

    def join_path(self, base: str, others: Iterable[str]) -> list[tuple[str, str, str, str]]:
        """Joins (table, column, joined table, its column) reaching every table from ``base``.

        Raises:
            QueryRejected: a table cannot be reached along foreign keys.
        """
        graph = self._graph()
        joined = {base}
        joins: list[tuple[str, str, str, str]] = []
        for target in others:
            if target in joined:
                continue
            previous: dict[str, tuple[str, str, str]] = {}
            queue = deque(sorted(joined))
            seen = set(joined)
            while queue and target not in seen:
                here = queue.popleft()
                for there, mine, theirs in graph[here]:
                    if there not in seen:
                        seen.add(there)
                        previous[there] = (here, mine, theirs)
                        queue.append(there)
            if target not in seen:
                raise QueryRejected(
                    f"no foreign-key path joins {base} to {target}; ask about one of them"
                )
            path = []
            node = target
            while node not in joined:
                here, mine, theirs = previous[node]
                path.append((here, mine, node, theirs))
                node = here
            for step in reversed(path):
                joins.append(step)
                joined.add(step[2])
        return joins

    # --- linking --------------------------------------------------------------------------

    def link(self, question: str) -> Links:
        """Tables, columns, values, years and cue words the question mentions."""
        links = Links()
        words = _words(question)
        found: list[tuple[int, str]] = []
        for table in self.tables:
            pos = self._mention(question, words, table)
            if pos >= 0:
                found.append((pos, table))
        links.tables = [t for _, t in sorted(found)]
        positions = {t: p for p, t in found}
        by_name: dict[str, list[ColumnRef]] = {}
        for refs in self.columns.values():
            for ref in refs:
                if not ref.key and self._mention(question, words, ref.column) >= 0:
                    by_name.setdefault(ref.column.lower(), []).append(ref)
        for refs in by_name.values():
            # "track name": of the tables that have the column, those the question names.
            named = [r for r in refs if r.table in positions]
            links.columns += named or refs
        links.values = self._value_mentions(question)
        links.years = [int(y) for y in _YEAR.findall(question)]
        # A column named "Total" is a column, not the cue word "total" — unless the question
        # has no other aggregation cue ("the total of invoices in 2010").
        column_words = {w for c in links.columns for w in _name_words(c.column)}
        cues = {kind for kind in _CUES if _has_cue(question, kind)}
        bare = {kind for kind in _CUES if _has_cue(_drop_words(question, column_words), kind)}
        links.cues = bare if bare & _AGGREGATING else cues
        if "count" in links.cues and links.cues & {"sum", "avg"} and "多少" in question:
            links.cues.discard("count")  # 总和是多少: "how much is the sum"
        # The table right after "how many"/"most"/"fewest" is what is counted.
        for kind in ("count", "most", "fewest"):
            for cue in _CUES[kind]:
                if _CJK.search(cue):
                    continue
                phrase = cue.split()
                i = _find_phrase(words, phrase)
                after = [
                    t for t, p in sorted(positions.items(), key=lambda x: x[1])
                    if i >= 0 and 0 < p - (i + len(phrase) - 1) <= 2
                ]  # fmt: skip
                if after and links.counted is None:
                    links.counted = after[0]
        return links

    @staticmethod
    def _mention(question: str, words: list[str], name: str) -> int:
        if _CJK.search(name):
            return question.find(name)
        phrase = _name_words(name)
        if not phrase or phrase == ["id"]:
            return -1
        return _find_phrase(words, phrase)

    def _value_mentions(self, question: str) -> list[tuple[str, list[ColumnRef]]]:
        low = question.casefold()
        hits: dict[str, list[ColumnRef]] = {}
        spans: list[tuple[int, int, str]] = []
        for value, ref in self._values:
            needle = value.casefold().strip()
            if _CJK.search(needle):
                pos = low.find(needle)
            else:
                m = re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", low)
                pos = m.start() if m else -1
            if pos < 0 or needle.isdigit():
                continue
            hits.setdefault(value, []).append(ref)
            spans.append((pos, pos + len(needle), value))
        # A value inside a longer mentioned value ("Rock" in "Rock And Roll") is not separate.
        kept = {
            v for s, e, v in spans
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)
        }  # fmt: skip
        return [(v, refs) for v, refs in hits.items() if v in kept]

    # --- the form -------------------------------------------------------------------------

    def form(self, question: str, links: Links | None = None) -> Form:
        """The slots left open by the links, as a JSON schema (enums; one choice = const)."""
        links = links or self.link(question)
        cues = links.cues
        value_tables = [r.table for _, refs in links.values for r in refs]
        column_tables = [r.table for r in links.columns]
        named = list(dict.fromkeys(links.tables + value_tables + column_tables))
        which = "which" in cues
        grain = "year" if "year" in cues else "month" if "month" in cues else None
        quantity = cues & {"most", "fewest"}
        extreme = cues & {"max", "min"}

        base_choices = list(links.tables) or named or list(self.tables)
        if links.counted:
            base_choices = [links.counted]
        scope = self._scope(named, base_choices[0])
        numeric = [c for t in scope for c in self.columns[t] if c.numeric and not c.key]
        linked_numeric = [c for c in links.columns if c.numeric]
        measures = [c.label for c in (linked_numeric or numeric)] or ["*"]
        dates = [c for t in scope for c in self.columns[t] if c.date]
        text_links = [c for c in links.columns if not c.numeric and not c.date]

        dims: list[str] = [f"{grain}({c.label})" for c in dates] if grain else []
        dims += [c.label for c in text_links]
        for table in links.tables:
            if table != base_choices[0]:
                dims += [c.label for c in self.label_columns(table)]
        dims = list(dict.fromkeys(dims))
        aggregations = _aggregations(cues, bool(linked_numeric), grain)

        properties: dict[str, Any] = {
            "table": {"enum": base_choices},
            "aggregation": {"enum": list(dict.fromkeys(aggregations))},
        }
        if set(aggregations) - {"count", "none"} or (extreme and "none" in aggregations):
            properties["measure"] = {"enum": measures}
        grouped = (quantity or extreme) and (which or grain) and dims
        if grouped:
            properties["group_by"] = {"enum": dims}
        if quantity or extreme:
            up = bool(cues & {"max", "most"})
            properties["order"] = {"enum": ["desc" if up else "asc"]}
        for i, (value, refs) in enumerate(links.values):
            properties[f"value_{i + 1}"] = {"enum": [f"{r.label} = {value}" for r in refs]}
        for i, year in enumerate(links.years):
            if dates:
                properties[f"year_{i + 1}"] = {"enum": [f"year({c.label}) = {year}" for c in dates]}
        fixed = {k: v["enum"][0] for k, v in properties.items() if len(v["enum"]) == 1}
        schema = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
        return Form(schema, links, fixed)

    def _scope(self, named: list[str], base: str) -> list[str]:
        """The tables a form may use: those named, else the base and its neighbours."""
        if named:
            return list(dict.fromkeys([base, *named]))
        return list(dict.fromkeys([base] + [n for n, _, _ in self._graph()[base]]))

    def prompt(self, question: str, form: Form) -> list[dict[str, str]]:
        """Chat messages asking the model to fill ``form`` for ``question``."""
        tables = {str(t) for t in form.schema["properties"]["table"]["enum"]}
        for slot in form.schema["properties"].values():
            for choice in slot["enum"]:
                m = re.match(r"(?:\w+\()?([^.()=]+)\.", str(choice))
                if m and m.group(1) in self.tables:
                    tables.add(m.group(1))
        lines = [f"{t}({', '.join(c.column for c in self.columns[t])})" for t in sorted(tables)]
        system = (
            "You fill in a query form for a SQL database. Pick, for every field, the choice "
            "that answers the question. aggregation: count rows, sum/avg/min/max of the "
            "measure column, or none to list rows. group_by: what the answer is a value of. "
            "Tables:\n" + "\n".join(lines)
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    # --- compiling ------------------------------------------------------------------------

    def _conditions(self, slots: dict[str, Any], tables_used: list[str]) -> list[str]:
        """WHERE conditions of the value and year slots (their tables added to the joins)."""
        conditions = []
        for key, choice in slots.items():
            if key.startswith("value_"):
                ref, value = str(choice).split(" = ", 1)
                table, column = ref.split(".", 1)
                conditions.append(f"{_col(table, column)} = {quote_literal(value)}")
            elif key.startswith("year_"):
                ref, year = str(choice)[len("year(") :].split(") = ", 1)
                table, column = ref.split(".", 1)
                part = _date_part("year", _col(table, column), self.database.dialect)
                conditions.append(f"{part} = {int(year)}")
            else:
                continue
            tables_used.append(table)
        return list(dict.fromkeys(conditions))

    def _grouping(self, group: str, tables_used: list[str]) -> tuple[str, list[str]]:
        """The GROUP BY expression and keys (an entity's key too: same names stay apart)."""
        if group == "none":
            return "", []
        m = re.fullmatch(r"(year|month)\((.+)\)", group)
        table, column = (m.group(2) if m else group).split(".", 1)
        tables_used.append(table)
        expr = _col(table, column)
        if m:
            return _date_part(m.group(1), expr, self.database.dialect), [
                _date_part(m.group(1), expr, self.database.dialect)
            ]
        labels = {c.column for c in self.label_columns(table)}
        keys = [_col(table, k) for k in self.tables[table].primary_key[:1] if column in labels]
        return expr, [expr, *keys]

    def compile(self, filled: dict[str, Any], form: Form) -> str:
        """SQL for a filled form (slots validated against the form's choices).

        Raises:
            QueryRejected: a slot holds something the form did not offer.
        """
        slots = dict(form.fixed)
        for key, spec in form.schema["properties"].items():
            value = filled.get(key, slots.get(key))
            if value not in spec["enum"]:
                raise QueryRejected(f"the form's '{key}' must be one of {spec['enum']}")
            slots[key] = value
        base = str(slots["table"])
        agg = str(slots["aggregation"])
        tables_used = [base]
        conditions = self._conditions(slots, tables_used)
        measure_ref = str(slots.get("measure", "*"))
        measure = "*"
        ranked = "order" in slots
        if measure_ref != "*" and agg != "count" and (agg != "none" or ranked):
            table, column = measure_ref.split(".", 1)
            tables_used.append(table)
            measure = _col(table, column)
        group = str(slots.get("group_by", "none"))
        group_sql, group_keys = self._grouping(group, tables_used)
        order = str(slots.get("order", "desc"))

        if agg == "none":
            shown = [_col(c.table, c.column) for c in self.label_columns(base)]
            text_links = [c for c in form.links.columns if not c.numeric and c.table == base]
            shown = list(dict.fromkeys([_col(c.table, c.column) for c in text_links] + shown))
            select = ", ".join(shown + ([measure] if measure != "*" else []))
            tail = (
                f" ORDER BY {measure} {order.upper()} LIMIT 1"
                if (measure != "*" and ranked)
                else " LIMIT 50"
            )
        elif group == "none":
            select = f"{'COUNT' if agg == 'count' else agg.upper()}({measure})"
            tail = ""
        else:
            value = (
                "COUNT(*)"
                if agg in ("count", "none") or measure == "*"
                else (f"{agg.upper()}({measure})")
            )
            select = f"{group_sql}, {value} AS value"
            tail = f" GROUP BY {', '.join(group_keys)}"
            tail += (
                f" ORDER BY value {order.upper()} LIMIT 1"
                if ranked
                else (" ORDER BY value DESC LIMIT 50")
            )
        joins = self.join_path(base, tables_used[1:])
        sql = f"SELECT {select} FROM {quote_ident(base)}"
        for here, mine, there, theirs in joins:
            sql += f" JOIN {quote_ident(there)} ON {_col(here, mine)} = {_col(there, theirs)}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        return sql + tail


def _aggregations(cues: set[str], linked_numeric: bool, grain: str | None) -> list[str]:
    """The aggregations a question's cue words leave open, likeliest first."""
    simple: list[str] = [a for a in ("count", "sum", "avg") if a in cues]
    grouping = "which" in cues or grain is not None
    if "count" in simple or (cues & {"most", "fewest"} and grouping):
        return ["count"]  # "how many …", "which artist has the most albums"
    if cues & {"max", "min"} and grouping:
        # "which year had the highest revenue" groups; "the longest track" ranks rows.
        if linked_numeric and not grain and not simple:
            return ["none", "max", "sum", "avg"]
        return list(dict.fromkeys([*(simple or ["sum", "avg", "max", "count"]), "none"]))
    if simple:
        return simple
    if cues & {"max", "min"}:
        return ["max" if "max" in cues else "min", "none"]
    # "which employee is the general manager": list rows; no cue at all: the model chooses.
    return ["none"] if "which" in cues else list(AGGREGATIONS)


def _col(table: str, column: str) -> str:
    return f"{quote_ident(table)}.{quote_ident(column)}"


_DATE_PARTS = {
    "sqlite": "CAST(strftime('{fmt}', {col}) AS INTEGER)",
    "postgres": "CAST(EXTRACT({PART} FROM CAST({col} AS TIMESTAMP)) AS INTEGER)",
    "duckdb": "{PART}(TRY_CAST({col} AS TIMESTAMP))",
}


def _date_part(part: str, column: str, dialect: str) -> str:
    fmt = "%Y" if part == "year" else "%m"
    return _DATE_PARTS.get(dialect, _DATE_PARTS["duckdb"]).format(
        fmt=fmt, col=column, PART=part.upper()
    )


def parse_filled(text: str) -> dict[str, Any]:
    """The model's filled form (JSON object).

    Raises:
        QueryRejected: not a JSON object.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueryRejected(f"the query form came back as invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise QueryRejected("the query form must be a JSON object")
    return data


FormFiller = Callable[[list[dict[str, str]], dict[str, Any]], str]
