"""Text that is safe to show, and small decisions about how to show results (no Streamlit).

Model output and document text go through ``plain``: every Markdown and HTML character is
escaped, so an answer or a passage cannot inject markup, and an ``![](http://host/?q=...)`` in
it stays text: the browser fetches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal

from kb_assistant.chains.guard import escape_markdown
from kb_assistant.vectorstore.conversations import ConversationInfo, StoredTurn
from kb_assistant.vectorstore.keywords import content_words

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
HIGHLIGHT = ":orange-background[{}]"


def plain(text: str) -> str:
    """``text`` as Markdown that renders exactly as written (``chains.guard.escape_markdown``)."""
    return escape_markdown(text)


def highlight_terms(*texts: str) -> list[str]:
    """The words worth highlighting in a passage: content words of the question and answer."""
    words = {w for t in texts for w in content_words(t) if len(w) > 1 or _CJK.match(w)}
    return sorted(words, key=len, reverse=True)


def highlighted(passage: str, terms: Iterable[str]) -> str:
    """``passage`` as safe Markdown with every occurrence of ``terms`` highlighted."""
    patterns = [
        re.escape(t) if _CJK.search(t) else rf"(?<![^\W_]){re.escape(t)}(?![^\W_])" for t in terms
    ]
    if not patterns:
        return plain(passage)
    finder = re.compile("|".join(patterns), re.IGNORECASE)
    out: list[str] = []
    position = 0
    for match in finder.finditer(passage):
        out.append(plain(passage[position : match.start()]))
        out.append(HIGHLIGHT.format(plain(match.group())))
        position = match.end()
    out.append(plain(passage[position:]))
    return "".join(out)


def marked_answer(answer: str, unsupported: Iterable[str], note: str) -> str:
    """``answer`` as safe Markdown with each unsupported sentence dimmed and followed by
    ``note`` ("not found in the sources"); nothing is dropped."""
    out: list[str] = []
    position = 0
    for sentence in unsupported:
        found = answer.find(sentence, position)
        if found < 0 or not sentence:
            continue
        out.append(plain(answer[position:found]))
        out.append(f":gray[{plain(sentence)}] :orange[*({plain(note)})*]")
        position = found + len(sentence)
    out.append(plain(answer[position:]))
    return "".join(out)


def where(name: str, page: int | None, sheet: str | None, page_word: str, sheet_word: str) -> str:
    """``file — page 2`` / ``file — sheet Sales``."""
    parts = [name]
    if page:
        parts.append(page_word.format(page=page))
    if sheet:
        parts.append(sheet_word.format(sheet=sheet))
    return " — ".join(parts)


ChartKind = Literal["bar", "line"]
MAX_CHART_ROWS = 50


def chart_kind(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> ChartKind | None:
    """A chart for a small numeric series: labels in the first column, numbers in the others.

    A line when the labels are ordered quantities (years, dates, numbers), bars otherwise;
    None when the result is not such a series (one row, too many rows, non-numeric values).
    """
    if len(columns) < 2 or not 2 <= len(rows) <= MAX_CHART_ROWS:
        return None
    values = [r[1:] for r in rows]
    if not all(_is_number(v) for row in values for v in row):
        return None
    labels = [r[0] for r in rows]
    if any(v is None for v in labels):
        return None
    ordered = all(_is_number(v) or isinstance(v, date | datetime) for v in labels)
    return "line" if ordered else "bar"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_seconds(value: float | None) -> str:
    """``1.23 s`` or an em dash."""
    return "—" if value is None else f"{value:.2f} s"


def conversation_markdown(info: ConversationInfo, turns: Sequence[StoredTurn]) -> str:
    """A conversation as Markdown, with its sources.

    Every text in it is escaped (``chains.guard.escape_markdown``): opened in a Markdown
    viewer it shows what the app showed, and an image or HTML in an old answer, a question
    or a document's name stays text, so the viewer fetches nothing.
    """
    lines = [f"# {escape_markdown(info.title or 'Conversation')}", "",
             f"Knowledge base: {escape_markdown(info.kb)}", ""]  # fmt: skip
    for turn in turns:
        lines += [f"**Q:** {escape_markdown(turn.question)}", "",
                  escape_markdown(turn.answer), ""]  # fmt: skip
        for c in turn.citations:
            page = f", page {c['page']}" if c.get("page") else ""
            name = c.get("name") or PurePath(c["source"]).name
            lines.append(f"- \\[{c['n']}\\] {escape_markdown(name)}{page}")
        lines.append("")
    return "\n".join(lines)
