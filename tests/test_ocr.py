"""OCR with the real engine on generated scans: Chinese and English text, two columns, a page
scanned sideways, image-only PDFs, images and pictures in Word files; then search, citations
with page boxes, the highlight, and hostile images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from kb_assistant.cli import main
from kb_assistant.loaders.ocr import OcrLine, reading_order, recognise, running_text
from kb_assistant.loaders.render import highlight, render_page
from tests.scans import (
    CHINESE_MARKER,
    CJK_FONT,
    ENGLISH_MARKER,
    LATIN_FONT,
    cer,
    image_pdf,
    sample_paragraphs,
)
from tests.scans import (
    render_page as scan_page,
)

pytestmark = pytest.mark.skipif(
    not all(Path(font).exists() for font, _ in (CJK_FONT, LATIN_FONT)),
    reason="scans are drawn with fonts-noto-cjk and fonts-dejavu-core (scripts/test installs them)",
)


def kb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


@pytest.mark.parametrize(("kind", "dpi", "bound"), [("zh", 300, 0.03), ("en", 150, 0.06)])
def test_a_dense_page_is_read_within_the_error_target(kind: str, dpi: int, bound: float) -> None:
    page = scan_page(sample_paragraphs(kind, count=4), dpi=dpi)
    result = recognise(page.image)
    assert cer(page.text, result.text, language=kind) <= bound
    assert 0.8 < result.confidence <= 1.0 and result.turned == 0
    # Each recognised line lies where a drawn line is.
    drawn = [box for _, box in page.lines]
    assert all(max(_overlap(line.box, b) for b in drawn) > 0.5 for line in result.lines)


def test_two_columns_are_read_one_after_the_other() -> None:
    left = [ENGLISH_MARKER, *sample_paragraphs("en", count=2)]
    page = scan_page(left + sample_paragraphs("en", start=3, count=6), dpi=150, columns=2,
                     title="Release notes")  # fmt: skip
    result = recognise(page.image)
    assert result.text.startswith("Release notes")
    assert cer(page.text, result.text, language="en") <= 0.06


@pytest.mark.parametrize("rotate", [270, 180])
def test_a_page_scanned_sideways_or_upside_down_is_turned_and_its_boxes_put_back(
    rotate: int,
) -> None:
    page = scan_page([CHINESE_MARKER, *sample_paragraphs("mixed", count=2)], dpi=150, rotate=rotate)
    result = recognise(page.image)
    assert result.turned == (360 - rotate) % 360  # turned back upright
    assert cer(page.text, result.text, language="mixed") <= 0.06
    assert result.text.replace(" ", "").startswith(CHINESE_MARKER[:10])
    # Boxes are given on the image as it was scanned, where the drawing put them.
    drawn = [box for _, box in page.image_lines()]
    assert all(max(_overlap(line.box, b) for b in drawn) > 0.5 for line in result.lines)


def test_reading_order_reads_a_table_row_by_row_and_columns_in_turn() -> None:
    def line(text: str, x0: float, y0: float, x1: float) -> OcrLine:
        return OcrLine(text, (x0, y0, x1, y0 + 0.02), 0.99)

    table = [line("b1", 0.5, 0.30, 0.55), line("a1", 0.1, 0.30, 0.15), line("b2", 0.5, 0.35, 0.55),
             line("a2", 0.1, 0.35, 0.15)]  # fmt: skip
    assert [x.text for x in reading_order(table)] == ["a1", "b1", "a2", "b2"]
    columns = [line(f"{side}{i}", x, 0.1 + 0.03 * i, x + 0.38) for side, x in (("r", 0.55),
               ("l", 0.05)) for i in range(4)]  # fmt: skip
    assert [x.text for x in reading_order(columns)] == [f"l{i}" for i in range(4)] + [
        f"r{i}" for i in range(4)
    ]
    chinese = [line("数据库在地下", 0.1, 0.1, 0.9), line("室里。", 0.1, 0.13, 0.3)]
    assert running_text(chinese) == "数据库在地下室里。"
    english = [line("the archive of", 0.1, 0.1, 0.9), line("kernels.", 0.1, 0.13, 0.3)]
    assert running_text(english) == "the archive of kernels."


def test_a_scanned_pdf_is_searchable_and_cites_its_page_with_boxes(tmp_path: Path) -> None:
    cover = scan_page(sample_paragraphs("en", count=2), dpi=150)
    marked = scan_page([*sample_paragraphs("zh", count=1), CHINESE_MARKER], dpi=150)
    pdf = image_pdf(tmp_path / "scan.pdf", [cover.image, marked.image], 150)
    report = json.loads(kb("ingest", str(pdf), "--json").output)
    assert report["added"] == [str(pdf)] and not report["failed"]
    docs = json.loads(kb("docs", "--json").output)
    assert any("text from OCR on 2 of 2 page(s)" in note for note in docs[0]["notes"])
    hits = json.loads(
        kb("search", "猫头鹰在凌晨三点把第四十二号数据库搬进了地下室", "--json").output
    )
    top = hits[0]
    assert top["page"] == 2 and top["ocr"] > 0.8
    assert "地下室" in top["text"]
    # The marker's drawn line lies under one of the cited chunk's boxes.
    marker_box = next(box for text, box in marked.lines if "猫头鹰" in text)
    assert max(_overlap(marker_box, tuple(b)) for b in top["boxes"]) > 0.5
    # The highlight covers it on the rendered page.
    picture = highlight(render_page(str(pdf), 2, width=600), top["boxes"])
    x = round((marker_box[0] + marker_box[2]) / 2 * picture.width)
    y = round((marker_box[1] + marker_box[3]) / 2 * picture.height)
    r, _g, b = picture.getpixel((x, y))
    assert b < r - 40  # tinted yellow, where the page is black or white


def test_ocr_never_says_why_a_scan_has_no_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = scan_page(sample_paragraphs("en", count=1), dpi=150)
    pdf = image_pdf(tmp_path / "scan.pdf", [page.image], 150)
    monkeypatch.setenv("KB_OCR", "never")
    report = json.loads(kb("ingest", str(pdf), "--json").output)
    assert "OCR is off (setting ocr = never)" in report["failed"][0]["error"]


def test_images_and_tiff_pages_and_pictures_in_word_files(tmp_path: Path) -> None:
    import docx

    english = scan_page([ENGLISH_MARKER], dpi=150)
    chinese = scan_page([CHINESE_MARKER], dpi=150)
    english.image.save(tmp_path / "note.png")
    english.image.save(tmp_path / "fax.tiff", save_all=True, append_images=[chinese.image])
    figure = scan_page(["图一：仓库里的第七台服务器正在备份。"], dpi=150).image
    figure.crop((0, 0, figure.width, figure.height // 4)).save(tmp_path / "figure.png")
    document = docx.Document()
    document.add_paragraph("The figure below was scanned from the archive.")
    document.add_picture(str(tmp_path / "figure.png"))
    document.save(str(tmp_path / "report.docx"))
    (tmp_path / "figure.png").unlink()
    report = json.loads(kb("ingest", str(tmp_path), "--json").output)
    assert len(report["added"]) == 3 and not report["failed"]
    hits = json.loads(kb("search", "猫头鹰 数据库 地下室", "-k", "5", "--json").output)
    found = {(Path(h["source"]).name, h["page"], h["heading"]) for h in hits}
    assert ("fax.tiff", 2, None) in found
    hits = json.loads(kb("search", "第七台服务器正在备份", "--json").output)
    assert (Path(hits[0]["source"]).name, hits[0]["heading"]) == (
        "report.docx",
        "[image image1.png]",
    )
    hits = json.loads(kb("search", "quartermaster archive kernels", "--json").output)
    assert {Path(h["source"]).name for h in hits} >= {"note.png", "fax.tiff"}


def test_hostile_images_are_refused_with_a_reason_and_the_batch_goes_on(tmp_path: Path) -> None:
    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")  # 100 MP in a few KB
    frames = [Image.new("1", (16, 16))] * 5_000
    frames[0].save(tmp_path / "many.tiff", save_all=True, append_images=frames[1:])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    good = scan_page([ENGLISH_MARKER], dpi=150)
    pdf = image_pdf(tmp_path / "good.pdf", [good.image], 150)
    data = bytearray((tmp_path / "good.pdf").read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4000] = b"\x00" * 4000  # damage the image stream
    (tmp_path / "damaged.pdf").write_bytes(bytes(data))
    report = json.loads(kb("ingest", str(tmp_path), "--json").output)
    errors = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert "10,000 x 10,000 pixels (100 MP)" in errors["huge.png"]
    assert "5,000 pages in one image" in errors["many.tiff"]
    assert "not a readable image" in errors["broken.jpg"]
    assert str(pdf) in report["added"]
    assert all("\n" not in e and len(e) < 300 for e in errors.values())


def test_a_scan_does_not_hold_up_the_rest_of_the_batch(tmp_path: Path) -> None:
    pages = [scan_page(sample_paragraphs("en", start=i, count=2), dpi=150).image for i in range(3)]
    image_pdf(tmp_path / "a-scan.pdf", pages, 150)  # first by name: read first before
    for name in ("b.txt", "c.md", "d.txt"):
        (tmp_path / name).write_text(f"Notes {name} about apt pinning.", encoding="utf-8")
    report = json.loads(kb("ingest", str(tmp_path), "--json").output)
    names = [Path(p).name for p in report["added"]]
    assert sorted(names) == ["a-scan.pdf", "b.txt", "c.md", "d.txt"]
    assert names[-1] == "a-scan.pdf"  # written last: the text files did not wait for its OCR
