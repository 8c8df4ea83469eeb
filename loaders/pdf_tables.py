"""Bordered tables inside PDFs: cells read by pdfplumber, pages chosen by a PDFium gate.

pdfplumber (pdfminer underneath) finds tables from a page's ruling lines (its "lines"
strategy), but it parses a page 10-50x slower than PDFium reads its text: 57 ms against
1.2 ms a page of the Debian Reference (261 pages). So a page goes to pdfplumber only when
PDFium sees ruling lines there that could bound two rows and two columns (``likely_tables``,
0.2-1 ms a page). On the Debian Reference the gate passes 118 pages, among them all 89 where
``page_tables`` finds a table; ``find_tables`` reads its 108 tables in 8.5 s. Tables ruled
only inside (no outer border) are closed along their lines' ends; tables drawn without
vertical ruling lines (aligned text, horizontal rules only) are not detected.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb_assistant.errors import CorruptDocument, EncryptedDocument

if TYPE_CHECKING:
    from pdfplumber.page import Page as PlumberPage

logger = logging.getLogger(__name__)

RULING_WIDTH = 2.0  # points: a path this thin in one direction is a ruling line
SNAP = 3.0  # points: ruling lines closer than this are one (pdfplumber's snap_tolerance)
MIN_RULINGS = 3  # two rows need three horizontal rulings, two columns three vertical ones
RECT_SEGMENTS = 5  # a rectangle: move, three lines and a closing line (or fewer)
# Characters further apart than this share of their size begin a new word. pdfplumber's
# default, 3 points, joins the words of PDFs that position words instead of writing spaces
# ("DebianReference" at 10 pt, whose word gaps are 2.8 points).
WORD_GAP = 0.2
INSIDE_TOLERANCE = 0.005  # of the page's width or height (about 3 pt on A4)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PdfTable:
    """One table found on a page of a PDF.

    Attributes:
        page: the page number, from 1.
        rows: the cells, row by row; the first row is the header. Cells are stripped text
            ("" where the table has no cell), a line break inside a cell read as a space
            (none between two Chinese or Japanese characters).
        box: the table's bounding box as fractions of the page's width and height, origin
            at the top left: (x0, y0, x1, y1).
        row_boxes: each row's box, likewise (one per row of ``rows``).
    """

    page: int
    rows: list[list[str]]
    box: Box
    row_boxes: tuple[Box, ...] = ()


# --- the PDFium gate ------------------------------------------------------------------------------


def likely_tables(pdfium_page: Any) -> bool:
    """Whether a page (a ``pypdfium2.PdfPage``) has the ruling lines of a bordered table.

    Its straight paths (lines and rectangles, inside form XObjects too; curved ones are icons
    or glyphs) must lie at three or more distinct x positions and three or more distinct y
    positions, the least a grid of two rows by two columns needs; or, for a table ruled only
    inside, thin vertical lines at two x positions or more must stand between thin
    horizontal ones (at two y positions or more) that run past them on both sides. A path of
    many straight segments (a whole grid in one path) passes too.
    """
    rulings = _Rulings()
    return rulings.collect(pdfium_page, form=False) or rulings.grid()


@dataclass
class _Rulings:
    """Positions of a page's straight paths, in PDF points."""

    xs: list[float] = field(default_factory=list)  # vertical lines and rectangles' sides
    ys: list[float] = field(default_factory=list)  # horizontal lines and rectangles' sides
    thin_xs: list[float] = field(default_factory=list)  # thin vertical lines
    thin_rows: list[Box] = field(default_factory=list)  # thin horizontal lines: (x0, y, x1, y)

    def collect(self, parent: Any, *, form: bool) -> bool:
        """Add the paths of a page (or a form XObject); True when one settles the answer."""
        import pypdfium2.raw as pdfium_c

        if form:
            count, get = pdfium_c.FPDFFormObj_CountObjects, pdfium_c.FPDFFormObj_GetObject
        else:
            count, get = pdfium_c.FPDFPage_CountObjects, pdfium_c.FPDFPage_GetObject
        for index in range(count(parent)):
            obj = get(parent, index)
            kind = pdfium_c.FPDFPageObj_GetType(obj)
            if kind == pdfium_c.FPDF_PAGEOBJ_FORM:
                if self.collect(obj, form=True):
                    return True
            elif kind == pdfium_c.FPDF_PAGEOBJ_PATH and self.add_path(obj):
                return True
        return False

    def add_path(self, obj: Any) -> bool:
        """Add one path object; True when it is a long straight path (a grid, maybe)."""
        import pypdfium2.raw as pdfium_c

        segments = pdfium_c.FPDFPath_CountSegments(obj)
        if segments > RECT_SEGMENTS:
            # A grid drawn as one path would need its segments read one by one (and its
            # matrix); a straight path this long is rare enough to hand to pdfplumber instead.
            return not _curved(obj, segments)
        left, bottom, right, top = (ctypes.c_float() for _ in range(4))
        if not pdfium_c.FPDFPageObj_GetBounds(obj, left, bottom, right, top):
            return False
        x0, y0, x1, y1 = left.value, bottom.value, right.value, top.value
        width, height = x1 - x0, y1 - y0
        if segments == 2 or min(width, height) <= RULING_WIDTH:  # a line, however thick
            if width < height:
                self.xs.append((x0 + x1) / 2)
                if width <= RULING_WIDTH:
                    self.thin_xs.append((x0 + x1) / 2)
            else:
                self.ys.append((y0 + y1) / 2)
                if height <= RULING_WIDTH:
                    self.thin_rows.append((x0, (y0 + y1) / 2, x1, (y0 + y1) / 2))
        else:  # a rectangle: four rulings
            self.xs.extend((x0, x1))
            self.ys.extend((y0, y1))
        return False

    def grid(self) -> bool:
        """Whether the rulings could bound two rows and two columns (see ``likely_tables``)."""
        if _distinct(self.xs) >= MIN_RULINGS and _distinct(self.ys) >= MIN_RULINGS:
            return True
        if _distinct(self.thin_xs) < 2 or _distinct([r[1] for r in self.thin_rows]) < 2:
            return False
        left = min(r[0] for r in self.thin_rows)
        right = max(r[2] for r in self.thin_rows)
        return left < min(self.thin_xs) - SNAP and right > max(self.thin_xs) + SNAP


def _curved(obj: Any, segments: int) -> bool:
    import pypdfium2.raw as pdfium_c

    return any(
        pdfium_c.FPDFPathSegment_GetType(pdfium_c.FPDFPath_GetPathSegment(obj, i))
        == pdfium_c.FPDF_SEGMENT_BEZIERTO
        for i in range(segments)
    )


def _distinct(positions: list[float]) -> int:
    """How many positions remain once those within ``SNAP`` of their neighbour are merged."""
    count, last = 0, float("-inf")
    for value in sorted(positions):
        if value - last > SNAP:
            count += 1
        last = value
    return count


# --- pdfplumber -----------------------------------------------------------------------------------


def page_tables(plumber_page: PlumberPage, page_number: int) -> list[PdfTable]:
    """The bordered tables of a pdfplumber page, top to bottom.

    A table whose outer border is missing (ruled inside only, or by lines that run past its
    outer columns) is closed along the ends of its ruling lines, so that its first and last
    rows and columns are kept. Tables of fewer than two rows or two columns, and tables
    without any text, are left out; so are rows and columns with no cell at all.
    """
    tables = plumber_page.find_tables()
    closing = _closing_edges(plumber_page.edges, [t.bbox for t in tables])
    if closing:
        tables = plumber_page.find_tables(
            {
                "explicit_vertical_lines": [e for e in closing if e["x0"] == e["x1"]],
                "explicit_horizontal_lines": [e for e in closing if e["top"] == e["bottom"]],
            }
        )
    x_origin, y_origin = plumber_page.bbox[0], plumber_page.bbox[1]
    width, height = float(plumber_page.width), float(plumber_page.height)
    found = []

    def fractions(bbox: tuple[float, float, float, float]) -> Box:
        x0, top, x1, bottom = bbox
        return (
            _fraction(x0 - x_origin, width), _fraction(top - y_origin, height),
            _fraction(x1 - x_origin, width), _fraction(bottom - y_origin, height),
        )  # fmt: skip

    for table in tables:
        raw = table.extract(x_tolerance_ratio=WORD_GAP)
        rows = _clean(raw)
        if len(rows) < 2 or len(rows[0]) < 2 or not any(any(row) for row in rows):
            continue
        kept = [i for i, row in enumerate(raw) if any(cell is not None for cell in row)]
        row_boxes = tuple(fractions(table.rows[i].bbox) for i in kept)
        if len(row_boxes) != len(rows):
            row_boxes = ()
        found.append(PdfTable(page_number, rows, fractions(table.bbox), row_boxes))
    return sorted(found, key=lambda t: (t.box[1], t.box[0]))


def _closing_edges(edges: list[dict[str, Any]], boxes: list[Box]) -> list[dict[str, Any]]:
    """Lines that close each table where its ruling lines run past it (its outer border is
    missing): the four sides of the box those lines reach."""
    closing = []
    for box in boxes:
        x0, top, x1, bottom = _reach(edges, box)
        if max(abs(a - b) for a, b in zip((x0, top, x1, bottom), box, strict=True)) > SNAP:
            closing += [
                _edge(x0, top, x0, bottom), _edge(x1, top, x1, bottom),
                _edge(x0, top, x1, top), _edge(x0, bottom, x1, bottom),
            ]  # fmt: skip
    return closing


def _reach(edges: list[dict[str, Any]], box: Box) -> Box:
    """The box grown along every ruling line that crosses or touches it, until none does."""
    x0, top, x1, bottom = box
    for _ in range(len(edges) + 1):
        grown = (x0, top, x1, bottom)
        for edge in edges:
            if not _touches(edge, (x0, top, x1, bottom)):
                continue
            if edge["orientation"] == "h":
                x0, x1 = min(x0, edge["x0"]), max(x1, edge["x1"])
            else:
                top, bottom = min(top, edge["top"]), max(bottom, edge["bottom"])
        if (x0, top, x1, bottom) == grown:
            break
    return x0, top, x1, bottom


def _touches(edge: dict[str, Any], box: Box) -> bool:
    """Whether a horizontal or vertical ruling line lies across the box or meets its side."""
    x0, top, x1, bottom = box
    left, right = float(edge["x0"]), float(edge["x1"])
    upper, lower = float(edge["top"]), float(edge["bottom"])
    if edge["orientation"] == "h":
        return top - SNAP <= upper <= bottom + SNAP and right >= x0 - SNAP and left <= x1 + SNAP
    if edge["orientation"] == "v":
        return x0 - SNAP <= left <= x1 + SNAP and lower >= top - SNAP and upper <= bottom + SNAP
    return False  # a slanted piece of a curve


def _edge(x0: float, top: float, x1: float, bottom: float) -> dict[str, Any]:
    """A line for pdfplumber's explicit lines (a vertical one when ``x0 == x1``)."""
    return {"object_type": "line", "x0": x0, "x1": x1, "top": top, "bottom": bottom,
            "width": x1 - x0, "height": bottom - top}  # fmt: skip


def _clean(raw: list[list[str | None]]) -> list[list[str]]:
    """Cells as text; rows and columns where pdfplumber found no cell at all dropped."""
    rows = [row for row in raw if any(cell is not None for cell in row)]
    width = max((len(row) for row in rows), default=0)
    rows = [row + [None] * (width - len(row)) for row in rows]
    keep = [c for c in range(width) if any(row[c] is not None for row in rows)]
    return [[_cell_text(row[c]) for c in keep] for row in rows]


def _cell_text(cell: str | None) -> str:
    if not cell:
        return ""
    lines = [line.strip() for line in cell.splitlines()]
    text = ""
    for line in lines:
        if not line:
            continue
        joined = text and not (_is_cjk(text[-1]) and _is_cjk(line[0]))
        text += (" " if joined else "") + line
    return text


def _is_cjk(char: str) -> bool:
    """Chinese and Japanese characters and punctuation: their lines join with no space
    (Korean, like English, breaks lines at the spaces between words)."""
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, CJK punctuation, kana, unified ideographs
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= code <= 0xFFEF  # full-width forms (，：（）)
        or 0x20000 <= code <= 0x3FFFF  # extension B and beyond
    )


def _fraction(value: float, total: float) -> float:
    return min(1.0, max(0.0, value / total)) if total > 0 else 0.0


def find_tables(path: Path, pages: Iterable[int] | None = None) -> list[PdfTable]:
    """Every bordered table of a PDF, in page order (``pages``: page numbers from 1; all
    pages by default). Pages without ruling lines are not parsed by pdfplumber at all.

    Raises:
        EncryptedDocument: the PDF needs a password.
        CorruptDocument: PDFium or pdfplumber cannot read its structure.
    """
    candidates = _gated_pages(path, pages)
    if not candidates:
        return []
    import pdfplumber
    from pdfplumber.utils.exceptions import PdfminerException

    try:
        with pdfplumber.open(path, pages=candidates, raise_unicode_errors=False) as plumber:
            return [t for page in plumber.pages for t in read_page(page, path)]
    except PdfminerException as exc:
        raise CorruptDocument(f"{path}: damaged PDF; its tables cannot be read ({exc})") from exc


def _gated_pages(path: Path, pages: Iterable[int] | None) -> list[int]:
    """The wanted page numbers, in order, whose page passes ``likely_tables``."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise EncryptedDocument(
                f"{path}: encrypted PDF; it needs a password to open (remove the password "
                "and try again)"
            ) from exc
        raise CorruptDocument(f"{path}: damaged or not a PDF ({exc})") from exc
    try:
        total = len(document)
        wanted = range(1, total + 1) if pages is None else sorted(set(pages))
        found = []
        for number in (n for n in wanted if 1 <= n <= total):
            try:
                page = document[number - 1]
            except pdfium.PdfiumError as exc:
                logger.warning("%s: page %d unreadable, skipped (%s)", path, number, exc)
                continue
            if likely_tables(page):
                found.append(number)
            page.close()
        return found
    finally:
        document.close()


def read_page(page: PlumberPage, path: Path) -> list[PdfTable]:
    """The tables of one pdfplumber page, which is closed after (none if it cannot be read)."""
    from pdfminer.psexceptions import PSException

    try:
        return page_tables(page, page.page_number)
    except (PSException, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning(
            "%s: page %d: its tables cannot be read (%s); skipped", path, page.page_number, exc
        )
        return []
    finally:
        page.close()  # pdfplumber keeps every object of a page until then


# --- output ---------------------------------------------------------------------------------------


def to_markdown(rows: list[list[str]]) -> str:
    """A GitHub Markdown table: the first row as the header, ragged rows padded, ``|`` inside
    a cell escaped as ``\\|`` and line breaks read as spaces. No rows: an empty string."""
    if not rows:
        return ""
    width = max(1, *(len(row) for row in rows))

    def line(row: list[str]) -> str:
        cells = [_markdown_cell(c) for c in row] + [""] * (width - len(row))
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line(rows[0]), "| " + " | ".join(["---"] * width) + " |"] +
                     [line(row) for row in rows[1:]])  # fmt: skip


def _markdown_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def inside(box: Box, table_box: Box, tolerance: float = INSIDE_TOLERANCE) -> bool:
    """Whether ``box`` (a line of text, normalised like ``PdfTable.box``) lies within
    ``table_box``, allowing ``tolerance`` (a fraction of the page) on every side."""
    x0, y0, x1, y1 = box
    tx0, ty0, tx1, ty1 = table_box
    return (
        x0 >= tx0 - tolerance
        and y0 >= ty0 - tolerance
        and x1 <= tx1 + tolerance
        and y1 <= ty1 + tolerance
    )
