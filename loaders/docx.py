"""Word (.docx): paragraphs and tables in reading order, sections at heading styles."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from kb_assistant.errors import CorruptDocument
from kb_assistant.loaders.base import LoadContext, Section, heading_path
from kb_assistant.loaders.image import embedded_images

_HEADING_STYLE = re.compile(r"^(?:Heading|标题)\s*(\d)$", re.IGNORECASE)


def load_docx(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream a .docx file as one section per heading."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise CorruptDocument(f"{path}: damaged or not a Word .docx file ({exc})") from exc
    stack: list[str] = []
    lines: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            lines.extend(_table_lines(block))
            continue
        text = block.text.strip()
        level = _heading_level(block.style.name if block.style is not None else "")
        if level is None:
            if text:
                lines.append(text)
            continue
        if lines:
            yield Section("\n".join(lines), heading=heading_path(stack))
            lines = []
        del stack[level - 1 :]
        stack.extend([""] * (level - 1 - len(stack)))
        stack.append(text)
    if lines:
        yield Section("\n".join(lines), heading=heading_path(stack))
    yield from embedded_images(path, ctx, "word/media/")


def _heading_level(style: str | None) -> int | None:
    if not style:
        return None
    if style.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(style)
    return int(match.group(1)) if match else None


def _table_lines(table: object) -> Iterator[str]:
    for row in table.rows:  # type: ignore[attr-defined]
        cells = [cell.text.strip() for cell in row.cells]
        # Merged cells repeat their text in every grid position they span.
        deduped = [c for i, c in enumerate(cells) if c and (i == 0 or c != cells[i - 1])]
        if deduped:
            yield " | ".join(deduped)
