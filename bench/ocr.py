"""OCR quality and speed: the character error rate (CER) of ``loaders.ocr.recognise`` on scanned
pages whose text is known, and how many pages a minute it reads.

1. Pages drawn from fixed English, Chinese and mixed prose (tests/scans.py), full A4 pages of
   11 pt text, one column, at 150 and 300 dpi: clean, then as a cheap scanner returns them
   (``tests.scans.degrade``); then two-column pages under a title, and pages put on the
   scanner sideways or upside down, each reported on its own row.
2. Real pages: the Debian FAQ's PDF (debian-faq, typeset by LaTeX) rasterised at 150 dpi with
   ``pdftoppm``, scored against the PDF's own text layer; and its Chinese translation's plain
   text drawn at 150 dpi (the Chinese PDF is a placeholder page).

CER is edits over reference characters after ``tests.scans.normalise`` (NFKC; whitespace
removed for Chinese and mixed text, collapsed for English). Targets: <= 3% at 300 dpi,
<= 6% at 150 dpi. Time is ``recognise`` alone, after one warm-up page.

Usage: python -m bench.ocr [--quick] [--diffs N] [--record]
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import itertools
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bench.measure import markdown_table, record_entry
from tests.scans import (
    Box,
    ScannedPage,
    cer,
    degrade,
    normalise,
    render_page,
    sample_paragraphs,
)

FAQ = Path("/usr/share/doc/debian/FAQ")
FAQ_PAGES = (19, 24, 33, 40, 52)  # 0-based pages of running text in debian-faq.en.pdf
Read = Callable[[Image.Image], Any]  # recognise: an image to something with .text and .lines


@dataclass(frozen=True)
class Case:
    """One page to read: how it was made, its image and the text it holds."""

    layout: str
    kind: str  # en, zh or mixed: what was written
    dpi: int
    image: Image.Image
    text: str
    lines: Sequence[tuple[str, Box]] = ()  # drawn lines, boxes in the image's frame

    @classmethod
    def drawn(cls, layout: str, kind: str, page: ScannedPage) -> Case:
        return cls(layout, kind, page.dpi, page.image, page.text, page.image_lines())


@dataclass(frozen=True)
class Reading:
    """What a page held, what was read from it and how long that took (the image let go)."""

    layout: str
    kind: str
    dpi: int
    reference: str
    text: str
    seconds: float
    cpu_seconds: float  # every thread of this process: what the page cost, however busy the machine
    cer: float
    boxes_found: float | None  # share of drawn lines an OCR box covers (IoU >= 0.5)


def synthetic_cases(quick: bool) -> Iterator[Case]:
    """Dense one-column pages per language and resolution; then two-column and turned pages."""
    per_cell = 1 if quick else 4
    for dpi in (150, 300):
        for kind in ("en", "zh", "mixed"):
            for start in range(per_cell):
                page = render_page(sample_paragraphs(kind, start=start), dpi=dpi)
                yield Case.drawn("one column", kind, page)
    for dpi in (150,) if quick else (150, 300):
        for kind in ("en",) if quick else ("en", "zh", "mixed"):
            for start in range(1 if quick else 2):
                page = render_page(sample_paragraphs(kind, start=start + 3), dpi=dpi)
                yield Case.drawn("scanned: skew 0.5°, blur, grain, JPEG", kind,
                                 degrade(page, seed=start))  # fmt: skip
    titles = {"en": "Keeping a Debian server healthy", "zh": "数据库的备份与恢复"}
    for kind in ("en",) if quick else ("en", "zh"):
        page = render_page(sample_paragraphs(kind, start=2), dpi=300, columns=2,
                           title=titles[kind])  # fmt: skip
        yield Case.drawn("two columns, title", kind, page)
    turns = [("en", 300, 90)] if quick else [("en", 300, 90), ("zh", 150, 270), ("en", 300, 180)]
    for kind, dpi, degrees in turns:
        page = render_page(sample_paragraphs(kind, start=1), dpi=dpi, rotate=degrees)
        yield Case.drawn(f"turned {degrees}°", kind, page)


def faq_cases(quick: bool, folder: Path) -> Iterator[Case]:
    """Pages of the Debian FAQ: the English PDF rasterised, the Chinese text drawn (150 dpi)."""
    pdf_gz, text_gz = FAQ / "debian-faq.en.pdf.gz", FAQ / "debian-faq.zh-cn.txt.gz"
    if pdf_gz.exists() and shutil.which("pdftoppm"):
        pdf = folder / "debian-faq.en.pdf"
        pdf.write_bytes(gzip.decompress(pdf_gz.read_bytes()))
        for index in FAQ_PAGES[:1] if quick else FAQ_PAGES:
            yield Case("Debian FAQ PDF page", "en", 150, _rasterise(pdf, index, 150, folder),
                       _text_layer(pdf, index))  # fmt: skip
    if text_gz.exists():
        paragraphs = _faq_paragraphs(gzip.decompress(text_gz.read_bytes()).decode("utf-8"))
        for start in (0,) if quick else (0, 40):
            page = render_page(paragraphs[start:], dpi=150)
            yield Case.drawn("Debian FAQ zh text, drawn", "mixed", page)


def _rasterise(pdf: Path, index: int, dpi: int, folder: Path) -> Image.Image:
    stem = folder / f"page-{index}"
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", "-png", "-singlefile",
                    "-f", str(index + 1), "-l", str(index + 1), str(pdf), str(stem)],
                   check=True)  # fmt: skip
    with Image.open(stem.with_suffix(".png")) as image:
        return image.copy()


def _text_layer(pdf: Path, index: int) -> str:
    """The page's text as printed: a line-end hyphen (pdfium's U+FFFE) is kept as "-"."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        text = str(document[index].get_textpage().get_text_range())
    finally:
        document.close()
    return text.replace("\ufffe", "-").replace("\r\n", "\n")


def _faq_paragraphs(text: str) -> list[str]:
    """Paragraphs of the FAQ's Chinese plain text from chapter 2 on (lines of a block joined)."""
    body = text[text.index("第 2 章") :]
    blocks = (re.sub(r"\s*\n\s*", "", block.strip()) for block in re.split(r"\n\s*\n", body))
    return [block for block in blocks if block and not block.startswith("---")]


def read_case(case: Case, read: Read) -> Reading:
    """Read one page and score it."""
    started, cpu = time.perf_counter(), time.process_time()
    page = read(case.image)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    found = None
    if case.lines:
        boxes = [line.box for line in page.lines]
        hits = sum(any(_iou(box, b) >= 0.5 for b in boxes) for _, box in case.lines)
        found = hits / len(case.lines)
    score = cer(case.text, page.text, language=case.kind)
    return Reading(
        case.layout, case.kind, case.dpi, case.text, page.text, seconds, cpu, score, found
    )


def _iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def differences(reading: Reading, limit: int) -> list[str]:
    """The first ``limit`` places where the text read differs from the text written."""
    ref, hyp = normalise(reading.reference, reading.kind), normalise(reading.text, reading.kind)
    matcher = difflib.SequenceMatcher(None, ref, hyp, autojunk=False)
    shown = []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op != "equal":
            shown.append(f"  {op}: {ref[max(0, a0 - 12) : a1 + 12]!r} -> "
                         f"{hyp[max(0, b0 - 12) : b1 + 12]!r}")  # fmt: skip
    return shown[:limit]


def quality_rows(readings: Sequence[Reading]) -> list[list[Any]]:
    """One row per layout, language and resolution."""
    rows: list[list[Any]] = [
        ["pages", "language", "dpi", "n", "CER %", "worst page CER %", "line boxes found %",
         "s/page"]
    ]  # fmt: skip
    groups: dict[tuple[str, str, int], list[Reading]] = {}
    for reading in readings:
        groups.setdefault((reading.layout, reading.kind, reading.dpi), []).append(reading)
    for (layout, kind, dpi), group in groups.items():
        reference = sum(len(normalise(r.reference, kind)) for r in group)
        errors = sum(r.cer * len(normalise(r.reference, kind)) for r in group)
        found = [r.boxes_found for r in group if r.boxes_found is not None]
        rows.append([layout, kind, dpi, len(group), round(100 * errors / reference, 2),
                     round(100 * max(r.cer for r in group), 2),
                     round(100 * statistics.mean(found), 1) if found else "-",
                     round(statistics.mean(r.seconds for r in group), 2)])  # fmt: skip
    return rows


def speed_rows(readings: Sequence[Reading]) -> list[list[Any]]:
    """Pages per minute at each resolution, over the dense one-column pages."""
    rows: list[list[Any]] = [
        ["dpi", "pages", "s/page (mean)", "s/page (max)", "CPU s/page", "pages/min"]
    ]
    for dpi in (150, 300):
        done = [r for r in readings if r.layout == "one column" and r.dpi == dpi]
        if done:
            wall = statistics.mean(r.seconds for r in done)
            rows.append([dpi, len(done), round(wall, 2), round(max(r.seconds for r in done), 2),
                         round(statistics.mean(r.cpu_seconds for r in done), 2),
                         round(60 / wall, 1)])  # fmt: skip
    return rows


def main() -> None:
    """Draw and read every page, print (and record) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one page per row (~1 minute)")
    parser.add_argument("--diffs", type=int, default=0, help="show N differences per page")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from kb_assistant.loaders.ocr import recognise

    recognise(render_page(["Warm-up: the engine loads its models once."], dpi=150).image)
    load = os.getloadavg()[0]
    readings = []
    with tempfile.TemporaryDirectory(prefix="kb-ocr-") as temp:
        for case in itertools.chain(synthetic_cases(args.quick), faq_cases(args.quick, Path(temp))):
            reading = read_case(case, recognise)
            readings.append(reading)
            if args.diffs:
                print(f"{case.layout}, {case.kind}, {case.dpi} dpi: CER {reading.cer:.2%}")
                print("\n".join(differences(reading, args.diffs)))
    command = "python -m bench.ocr" + (" --quick" if args.quick else "")
    record_entry("OCR: character error rate and speed", command, quality_rows(readings),
                 ["Targets: CER <= 3% at 300 dpi and <= 6% at 150 dpi. Pages per minute "
                  "(recognise alone, one process, every core):", markdown_table(
                      speed_rows(readings)), f"Load average (1 min) at the start and the end: "
                  f"{load:.1f}, {os.getloadavg()[0]:.1f} (other work slows the wall time, not "
                  "the CPU time)."], write=args.record)  # fmt: skip


if __name__ == "__main__":
    main()
