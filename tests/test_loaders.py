"""Real loaders on real files made by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_assistant.errors import CorruptDocument, EmptyDocument, EncryptedDocument, UnsupportedFormat
from kb_assistant.loaders import LoadContext, Section, load_sections
from kb_assistant.loaders.text import SECTION_CHARS
from tests.files import make_docx, make_encrypted_pdf, make_epub, make_pdf, make_pptx, make_xlsx

CHINESE = "知识库助手在本地运行。它不会把文件发送到网络上！用户可以用中文提问吗？当然可以。"


def load(path: Path, max_rows: int = 100_000) -> tuple[list[Section], LoadContext]:
    ctx = LoadContext(max_rows=max_rows)
    return list(load_sections(path, ctx)), ctx


def test_pdf_keeps_page_numbers(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "guide.pdf", ["Alpha page about apt.", "", "Gamma page about dpkg."])
    sections, ctx = load(pdf)
    assert ctx.pages == 3
    assert [s.page for s in sections] == [1, 3]  # the blank page holds no text
    assert "Alpha" in sections[0].text and "Gamma" in sections[1].text


def test_encrypted_pdf_is_refused_with_reason(tmp_path: Path) -> None:
    pdf = make_encrypted_pdf(tmp_path / "locked.pdf", "secret text")
    with pytest.raises(EncryptedDocument, match="password"):
        load(pdf)


def test_corrupt_pdf_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref")
    with pytest.raises(CorruptDocument, match="damaged or not a PDF"):
        load(bad)


def test_pdf_without_text_is_empty_not_silent(tmp_path: Path) -> None:
    with pytest.raises(EmptyDocument, match="neither text nor images"):
        load(make_pdf(tmp_path / "scan.pdf", ["", ""]))


def test_docx_sections_follow_headings_and_keep_tables(tmp_path: Path) -> None:
    path = make_docx(
        tmp_path / "report.docx",
        [("h1", "Results"), ("p", "Sales grew."), ("h2", "Regional"), ("p", "North led.")],
        table=[["Region", "Sales"], ["North", "42"]],
    )
    sections, _ = load(path)
    assert [s.heading for s in sections] == ["Results", "Results > Regional"]
    assert "Sales grew." in sections[0].text
    assert "North | 42" in sections[1].text


def test_xlsx_keeps_sheet_names_and_column_names(tmp_path: Path) -> None:
    path = make_xlsx(
        tmp_path / "staff.xlsx",
        {
            "员工": [["姓名", "职位"], ["王伟", "总经理"]],
            "Budget": [["Item", "Cost"], ["Laptop", 1200]],
        },
    )
    sections, _ = load(path)
    assert [(s.sheet, s.text) for s in sections] == [
        ("员工", "姓名: 王伟; 职位: 总经理"),
        ("Budget", "Item: Laptop; Cost: 1200"),
    ]


def test_csv_sniffs_delimiter_and_caps_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("city;population\nParis;2100000\nLyon;520000\nNice;340000\n", encoding="utf-8")
    sections, ctx = load(path, max_rows=2)
    assert sections[0].text.splitlines() == [
        "city: Paris; population: 2100000",
        "city: Lyon; population: 520000",
    ]
    assert ctx.notes and "truncated" in ctx.notes[0]


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "big5", "utf-16", "utf-8-sig", "utf-8"])
def test_text_encodings_are_detected(tmp_path: Path, encoding: str) -> None:
    text = (
        CHINESE
        if encoding != "big5"
        else "知識庫助手在本地運行。它不會把檔案傳送到網路上！使用者可以用中文提問嗎？當然可以。"
    )
    path = tmp_path / f"note-{encoding}.txt"
    path.write_bytes((text + "\n").encode(encoding))
    sections, _ = load(path)
    assert "".join(s.text for s in sections).strip() == text


def test_chinese_markdown_sections_by_heading(tmp_path: Path) -> None:
    path = tmp_path / "说明.md"
    path.write_text(
        "# 安装\n\n运行安装程序。\n\n```\n# 这不是标题\n```\n\n## 网络\n\n配置网络。\n",
        encoding="utf-8",
    )
    sections, _ = load(path)
    assert [s.heading for s in sections] == ["安装", "安装 > 网络"]
    assert "# 这不是标题" in sections[0].text


def test_html_drops_scripts_and_follows_headings(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(
        '<html><head><meta charset="gbk"><title>t</title><script>alert("x")</script></head>'
        "<body><nav>Home | Next</nav><h1>指南</h1><p>第一段。</p><h2>Setup</h2>"
        "<table><tr><td>a</td><td>b</td></tr></table></body></html>".encode("gbk")
    )
    sections, _ = load(path)
    text = "\n".join(s.text for s in sections)
    assert [s.heading for s in sections] == ["指南", "指南 > Setup"]
    assert "第一段。" in sections[0].text and "a | b" in sections[1].text
    assert "alert" not in text and "Home" not in text


def test_pptx_and_epub_load_offline(tmp_path: Path, offline: list[object]) -> None:
    attempts = len(offline)
    deck = make_pptx(
        tmp_path / "deck.pptx",
        [("Roadmap", "Ship the offline assistant."), ("Risks", "None known.")],
    )
    book = make_epub(
        tmp_path / "book.epub", [("Chapter One", "It was a quiet night in the archive.")]
    )
    slides, ctx = load(deck)
    chapters, _ = load(book)
    assert [(s.page, s.heading) for s in slides] == [(1, "Roadmap"), (2, "Risks")]
    assert ctx.pages == 2
    assert "Ship the offline assistant." in slides[0].text
    assert chapters[0].heading == "Chapter One" and "quiet night" in chapters[0].text
    assert offline[attempts:] == []  # neither a model download nor telemetry was attempted


def test_unsupported_extension_names_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3\x04")
    with pytest.raises(UnsupportedFormat, match=r"unsupported file type '\.mp3'.*\.pdf.*\.png"):
        load(path)


def test_binary_file_named_txt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"abc\x00\x01\x02" * 100)
    with pytest.raises(CorruptDocument, match="binary"):
        load(path)


def test_large_text_is_streamed_in_bounded_sections(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    paragraph = ("The quick brown fox jumps over the lazy dog. " * 20 + "\n\n").encode()
    with path.open("wb") as fh:
        for _ in range(3 * SECTION_CHARS // len(paragraph) * 4):
            fh.write(paragraph)
    sizes = [len(s.text) for s in load_sections(path, LoadContext())]
    assert len(sizes) >= 10
    assert max(sizes) < SECTION_CHARS + len(paragraph)
    assert sum(sizes) == path.stat().st_size


def test_pdf_text_lines_keep_their_boxes_on_the_page(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "guide.pdf", ["First line about apt.\nSecond line about dpkg."])
    [section], _ = load(pdf)
    assert section.ocr is None
    texts = [line[0] for line in section.lines]
    assert texts == ["First line about apt.", "Second line about dpkg."]
    first, second = (line[1:] for line in section.lines)
    assert 0 < first[0] < first[2] < 1 and 0 < first[1] < first[3] < second[1] < second[3] < 0.3


def test_sixteen_bit_scans_keep_their_contrast_and_cut_images_say_why(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from kb_assistant.loaders.ocr import eight_bit

    grey = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert grey.mode.startswith("I;16")
    assert list(np.asarray(eight_bit(grey))[0]) == [0, 127, 255]
    whole = tmp_path / "whole.png"
    Image.new("L", (400, 300), 200).save(whole)
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CorruptDocument, match="not a readable image"):
        load(tmp_path / "cut.png")


def test_a_very_tall_page_is_drawn_within_bounds(tmp_path: Path) -> None:
    from fpdf import FPDF

    from kb_assistant.loaders.render import MAX_WIDTH, render_page

    pdf = FPDF(format=(20, 5000))  # mm: a strip 20 mm wide and 5 m tall
    pdf.add_page()
    pdf.set_font("helvetica", size=6)
    pdf.text(2, 10, "strip")
    pdf.output(str(tmp_path / "strip.pdf"))
    picture = render_page(str(tmp_path / "strip.pdf"), 1, width=900)
    assert max(picture.size) <= MAX_WIDTH


def test_line_boxes_are_measured_from_the_page_box_origin(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import RectangleObject

    plain = make_pdf(tmp_path / "plain.pdf", ["A line about apt."])
    writer = PdfWriter()
    page = PdfReader(plain).pages[0]
    width, height = float(page.mediabox.width), float(page.mediabox.height)
    page.mediabox = RectangleObject([-100, -200, width, height])  # grown left and down
    writer.add_page(page)
    with (tmp_path / "shifted.pdf").open("wb") as fh:
        writer.write(fh)
    [before], _ = load(plain)
    [after], _ = load(tmp_path / "shifted.pdf")
    (_, x0, y0, _, _), (_, x0_shifted, y0_shifted, _, _) = before.lines[0], after.lines[0]
    assert x0_shifted == pytest.approx((x0 * width + 100) / (width + 100), abs=1e-3)
    assert y0_shifted == pytest.approx(y0 * height / (height + 200), abs=1e-3)
