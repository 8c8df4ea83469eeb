"""Builders of small real documents for tests (PDF, DOCX, XLSX, PPTX, EPUB, text)."""

from __future__ import annotations

import zlib
from pathlib import Path


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A PDF with one page per string (Latin text)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def make_encrypted_pdf(path: Path, text: str, password: str = "secret") -> Path:
    """A PDF that needs ``password`` to open."""
    from pypdf import PdfReader, PdfWriter

    plain = make_pdf(path.with_name("plain-" + path.name), [text])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password=password, owner_password=password + "-owner")
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def make_docx(
    path: Path, blocks: list[tuple[str, str]], table: list[list[str]] | None = None
) -> Path:
    """A Word file from ``(style, text)`` blocks; style 'h1'/'h2' or 'p'."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1]))
        else:
            document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    document.save(str(path))
    return path


def make_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    """An Excel workbook with the given sheets of rows."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def make_pptx(path: Path, slides: list[tuple[str, str]]) -> Path:
    """A PowerPoint file, one ``(title, body)`` per slide."""
    from pptx import Presentation

    deck = Presentation()
    for title, body in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(str(path))
    return path


def make_epub(path: Path, chapters: list[tuple[str, str]]) -> Path:
    """An EPUB book, one ``(title, paragraph)`` per chapter."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("kb-test-book")
    book.set_title("Test book")
    book.set_language("en")
    items = []
    for i, (title, text) in enumerate(chapters, start=1):
        chapter = epub.EpubHtml(title=title, file_name=f"ch{i}.xhtml", lang="en")
        chapter.content = f"<h1>{title}</h1><p>{text}</p>"
        book.add_item(chapter)
        items.append(chapter)
    book.toc = tuple(items)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return path


def write_text(path: Path, text: str) -> Path:
    """A UTF-8 text file with ``text``; its path."""
    path.write_text(text, encoding="utf-8")
    return path


# Kept in the repository (see tests/data/README.md): the Chinook sample database and the
# project's reference retrieval scorer.
DATA = Path(__file__).resolve().parent / "data"
CHINOOK = DATA / "chinook.sqlite"
REFERENCE_SCORER = DATA / "score_retrieval.py"


def make_raw_pdf(path: Path, content: bytes, *, compressed: bytes | None = None) -> Path:
    """A one-page PDF written by hand, with Helvetica as /F1 and ``content`` as the page's
    content stream (``compressed`` instead: FlateDecode bytes, e.g. a stream built to inflate
    far beyond its size)."""
    stream = compressed if compressed is not None else zlib.compress(content, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]  # fmt: skip
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref,
    )  # fmt: skip
    path.write_bytes(bytes(out))
    return path


def deflate_bomb(inflated: int, byte: bytes = b" ") -> bytes:
    """zlib bytes that inflate to ``inflated`` bytes of ``byte`` (about 1/1000 of that)."""
    packer = zlib.compressobj(9)
    block = byte * (1 << 20)
    parts = [packer.compress(block) for _ in range(inflated >> 20)]
    return b"".join(parts) + packer.flush()


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    """A ZIP container (as DOCX/XLSX/EPUB) with the given entries, deflated."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
PAGE_BREAK = "\f"


def make_table_pdf(
    path: Path,
    blocks: list[str | list[list[str]]],
    *,
    font_size: float = 10,
    borders_layout: str = "ALL",
) -> list[tuple[int, int]]:
    """A PDF of paragraphs (``str``; ``PAGE_BREAK`` starts a new page) and bordered tables
    (rows of cells, the first the header, repeated on each page), drawn by fpdf2's
    ``FPDF.table`` (``borders_layout``: fpdf2's, e.g. "INTERNAL" for no outer border). Any
    character beyond Latin-1 selects the WenQuanYi Zen Hei font (Chinese).
    Returns the first and last page of each table."""
    import logging

    from fpdf import FPDF

    logging.getLogger("fontTools.subset").setLevel(logging.ERROR)  # "BDF NOT subset" lines
    pdf = FPDF()
    text = "".join(b if isinstance(b, str) else "".join(c for r in b for c in r) for b in blocks)
    if any(ord(c) > 0xFF for c in text):
        pdf.add_font("wqy", fname=str(CJK_FONT))
        pdf.add_font("wqy", style="B", fname=str(CJK_FONT))  # table headings are bold
        pdf.set_font("wqy", size=font_size)
    else:
        pdf.set_font("helvetica", size=font_size)
    pdf.add_page()
    spans = []
    for block in blocks:
        if block == PAGE_BREAK:
            pdf.add_page()
        elif isinstance(block, str):
            pdf.multi_cell(0, font_size * 0.6, block, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        else:
            first = pdf.page_no()
            with pdf.table(borders_layout=borders_layout) as table:
                for cells in block:
                    row = table.row()
                    for cell in cells:
                        row.cell(cell)
            spans.append((first, pdf.page_no()))
            pdf.ln(4)
    pdf.output(str(path))
    return spans
