"""PDF: text per page with its lines' boxes, tables as Markdown, scanned pages read by OCR.

pypdfium2 (PDFium, the engine of Chrome's viewer) extracts text about 17x faster than pypdf on
the Debian Reference (0.29 s vs 5.06 s for 276 pages), so it reads every PDF; pypdf, which
repairs some damaged cross-reference tables that PDFium rejects, is the fallback (text only).

Each page becomes one section with the boxes of its text lines (normalised to the page), so a
citation can be highlighted where it stands. A page with little or no text layer over a page
that is mostly image (a scan) is rendered and read by OCR (``loaders.ocr``), per ``ctx.ocr``:
``auto`` (those pages), ``always`` (every page) or ``never``. A page drawn with ruling lines is
searched for tables (pdfplumber, ``loaders.pdf_tables``): each table becomes a section of its
own in Markdown, and its cells leave the page's running text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb_assistant.errors import CorruptDocument, EmptyDocument, EncryptedDocument
from kb_assistant.loaders.base import LoadContext, Section

logger = logging.getLogger(__name__)
_ENCRYPTED = "encrypted PDF; it needs a password to open (remove the password and try again)"
MIN_TEXT = 20  # characters: a page with fewer has no usable text layer
MOSTLY_IMAGE = 0.5  # share of the page under images for a scan with a little text on it
SPARSE_TEXT = 0.05  # share of the page the text layer covers on such a scan
OCR_DPI = (150, 300)  # pages are rendered at their images' resolution, within these bounds
OCR_MAX_SIDE = 2400  # pixels on the long side (the detector sees no more: loaders.ocr)
OCR_CPU_PER_PAGE = 60.0  # processor seconds each OCR'd page adds to the parser's limit
# Runs of text on one page past which its lines get no boxes: PDFium reads each run's text in
# time linear in the page's, and a hostile page of 10,000 runs took minutes (a page of a book
# has under 100).
MAX_RUNS = 2_000


def load_pdf(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream a PDF page by page.

    Raises:
        EncryptedDocument: it needs a password (an empty user password is tried first).
        CorruptDocument: neither PDFium nor pypdf can read its structure.
        EmptyDocument: no page has text (and OCR is off or found none).
    """
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise EncryptedDocument(f"{path}: {_ENCRYPTED}") from exc
        logger.info("%s: PDFium cannot open it (%s); trying pypdf", path, exc)
        yield from _require_text(_pypdf_pages(path, ctx), path, ctx, "PDFium could not open it")
        return
    reader = _PageReader(path, ctx)
    try:
        yield from _require_text(reader.pages(document), path, ctx, reader)
    finally:
        reader.close()
        document.close()


class _PageReader:
    """Reads PDFium pages: text layer, tables, or OCR; remembers what OCR did for a note."""

    def __init__(self, path: Path, ctx: LoadContext) -> None:
        self.path, self.ctx = path, ctx
        self.ocr_pages: list[float] = []  # confidence of each page read by OCR
        self.ocr_tried = 0
        self._plumber: Any = None

    def pages(self, document: Any) -> Iterator[Section]:
        import pypdfium2 as pdfium

        self.ctx.pages = total = len(document)
        for number in range(1, total + 1):
            try:
                page = document[number - 1]
                try:
                    yield from self._page(page, number)
                finally:
                    page.close()
            except pdfium.PdfiumError as exc:
                logger.warning("%s: page %d unreadable, skipped (%s)", self.path, number, exc)
                self.ctx.note(f"page {number} unreadable")
            self.ctx.page_done(number, total)
        if self.ocr_pages:
            mean = sum(self.ocr_pages) / len(self.ocr_pages)
            self.ctx.note(
                f"text from OCR on {len(self.ocr_pages)} of {total} page(s), confidence {mean:.2f}"
            )

    def _page(self, page: Any, number: int) -> Iterator[Section]:
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded()
            if self._wants_ocr(page, textpage, text):
                section = self._ocr(page, number)
                if section.text.strip() or not text.strip():
                    yield section
                    return
            lines = _text_lines(page, textpage)
        finally:
            textpage.close()
        # Without line boxes the text around a table cannot be told apart: keep the page whole.
        tables = self._tables(page, number) if lines else []
        if not tables:
            yield Section(text, page=number, lines=lines)
            return
        yield from _around_tables(lines, tables, number)

    def _wants_ocr(self, page: Any, textpage: Any, text: str) -> bool:
        if self.ctx.ocr == "never":
            return False
        if self.ctx.ocr == "always":
            return True
        width, height = page.get_size()
        area = max(1.0, width * height)
        images = min(1.0, sum(_area(b) for b, _ in _images(page)) / area)
        if len(text.strip()) < MIN_TEXT:
            return bool(images > 0.05)
        runs = min(textpage.count_rects(), MAX_RUNS)
        covered = sum(_area(textpage.get_rect(i)) for i in range(runs))
        return bool(images >= MOSTLY_IMAGE and covered / area < SPARSE_TEXT)

    def _ocr(self, page: Any, number: int) -> Section:
        from kb_assistant.loaders.ocr import recognise

        width, height = page.get_size()
        dpi = min(max(_image_dpi(page), OCR_DPI[0]), OCR_DPI[1])
        scale = min(dpi / 72, OCR_MAX_SIDE / max(width, height, 1.0))
        image = page.render(scale=scale, may_draw_forms=True).to_pil()
        self.ctx.extra_cpu_seconds += OCR_CPU_PER_PAGE
        self.ocr_tried += 1
        result = recognise(image)
        lines = tuple((line.text, *line.box) for line in result.lines)
        if result.text.strip():
            self.ocr_pages.append(result.confidence)
        return Section(result.text, page=number, lines=lines, ocr=round(result.confidence, 3))

    def _tables(self, page: Any, number: int) -> list[Any]:
        from kb_assistant.loaders import pdf_tables

        if not pdf_tables.likely_tables(page):
            return []
        try:
            if self._plumber is None:
                import pdfplumber

                self._plumber = pdfplumber.open(self.path, raise_unicode_errors=False)
            return pdf_tables.read_page(self._plumber.pages[number - 1], self.path)
        except Exception as exc:  # pdfminer fails in its own ways on damaged files
            logger.info("%s: tables on page %d not read (%s)", self.path, number, exc)
            return []

    def __str__(self) -> str:
        """Why no page gave text (for the error of an empty document)."""
        if self.ctx.ocr == "never":
            return "it may be a scanned image, and OCR is off (setting ocr = never)"
        if self.ocr_tried:
            return f"OCR read {self.ocr_tried} page(s) as images and found no text either"
        return "its pages hold neither text nor images (blank pages?)"

    def close(self) -> None:
        if self._plumber is not None:
            with contextlib.suppress(Exception):
                self._plumber.close()


def _around_tables(
    lines: tuple[tuple[str, float, float, float, float], ...], tables: list[Any], number: int
) -> Iterator[Section]:
    """The page's lines outside its tables, cut where each table stands, and the tables."""
    from kb_assistant.loaders.pdf_tables import inside, to_markdown

    rest = [line for line in lines if not any(inside(line[1:], t.box) for t in tables)]
    for table in sorted(tables, key=lambda t: t.box[1]):
        above = [line for line in rest if line[2] < table.box[1]]
        rest = [line for line in rest if line[2] >= table.box[1]]
        if above:
            yield Section("\n".join(line[0] for line in above), page=number, lines=tuple(above))
        markdown = to_markdown(table.rows)
        rows = markdown.split("\n")
        if table.row_boxes:  # header and rows; the rule line below the header has no box
            lines = tuple(
                (row, *box) for row, box in zip(rows[:1] + rows[2:], table.row_boxes, strict=False)
            )
        else:
            lines = ((markdown, *table.box),)
        yield Section(markdown, page=number, lines=lines)
    if rest:
        yield Section("\n".join(line[0] for line in rest), page=number, lines=tuple(rest))


def _text_lines(page: Any, textpage: Any) -> tuple[tuple[str, float, float, float, float], ...]:
    """The text layer's runs of text (PDFium's rectangles) with their boxes on the page."""
    if page.get_rotation() % 360:
        return ()  # boxes are in the unrotated page's space: no highlight rather than a wrong one
    runs = textpage.count_rects()
    if runs > MAX_RUNS:
        return ()
    # Text runs are in the page's own coordinates; what is shown is its crop box, which need
    # not start at (0, 0).
    x0, y0, x1, y1 = page.get_bbox()
    width, height = max(1e-6, x1 - x0), max(1e-6, y1 - y0)
    lines = []
    for index in range(runs):
        left, bottom, right, top = textpage.get_rect(index)
        text = textpage.get_text_bounded(left, bottom, right, top).strip()
        if text:
            box = ((left - x0) / width, (y1 - top) / height, (right - x0) / width,
                   (y1 - bottom) / height)  # fmt: skip
            lines.append((text, *(round(min(1.0, max(0.0, v)), 4) for v in box)))
    return tuple(lines)


def _images(page: Any) -> Iterator[tuple[tuple[float, float, float, float], Any]]:
    from pypdfium2 import raw

    for obj in page.get_objects(filter=(raw.FPDF_PAGEOBJ_IMAGE,), max_depth=4):
        with contextlib.suppress(Exception):
            yield obj.get_bounds(), obj


def _image_dpi(page: Any) -> float:
    """The resolution of the page's largest image as it is drawn (0 when it has none)."""
    best, dpi = 0.0, 0.0
    for bounds, image in _images(page):
        with contextlib.suppress(Exception):
            pixels_wide = image.get_px_size()[0]
            if _area(bounds) > best and bounds[2] > bounds[0]:
                best, dpi = _area(bounds), pixels_wide / ((bounds[2] - bounds[0]) / 72)
    return dpi


def _area(box: tuple[float, float, float, float]) -> float:
    return abs(box[2] - box[0]) * abs(box[3] - box[1])


def _pypdf_pages(path: Path, ctx: LoadContext) -> Iterator[Section]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise EncryptedDocument(f"{path}: {_ENCRYPTED}")
        ctx.pages = len(reader.pages)
    except (FileNotDecryptedError, DependencyError) as exc:
        raise EncryptedDocument(f"{path}: {_ENCRYPTED}") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptDocument(f"{path}: damaged or not a PDF ({exc})") from exc
    for number, page in enumerate(reader.pages, start=1):
        try:
            yield Section(page.extract_text() or "", page=number)
        except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s: page %d unreadable, skipped (%s)", path, number, exc)
            ctx.note(f"page {number} unreadable")


def _require_text(
    pages: Iterator[Section], path: Path, ctx: LoadContext, why: object
) -> Iterator[Section]:
    """The sections with text; none at all is an error saying ``why`` (read at the end)."""
    found = False
    for section in pages:
        if section.text.strip():
            found = True
            yield section
    if not found:
        raise EmptyDocument(f"{path}: no extractable text in {ctx.pages or 0} page(s); {why}")
