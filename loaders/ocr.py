"""Read the text of page images: RapidOCR (PP-OCR detection and recognition, Chinese + English).

The ``rapidocr`` wheel carries its ONNX models (PP-OCRv6 small detection and recognition, the
PP-OCR direction classifier) and runs them on ONNX Runtime, which we ship already: nothing is
downloaded. The engine returns text lines in no useful order; ``recognise`` puts them in reading
order (``reading_order``: columns left to right, each top to bottom; table rows left to right),
turns a page scanned sideways upright, and joins the lines into running text the way they were
written (Chinese lines without a space, English with one, paragraphs on new lines).

Boxes are normalised to the page (0..1, origin top-left), so they can be drawn on a rendering of
the page at any resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in 0..1 of the page, top-left origin
MAX_SIDE = 2400  # pixels the detector sees on the long side (RapidOCR's default is 2000)
READABLE = 0.85  # upright pages read at 0.98-1.0, pages the wrong way up at 0.58-0.69 (bench.ocr)
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
_SENTENCE_END = tuple("。！？；：.!?;:")


@dataclass(frozen=True)
class OcrLine:
    """One line of recognised text, its box on the page and the recogniser's confidence."""

    text: str
    box: Box
    score: float


@dataclass(frozen=True)
class OcrPage:
    """The text of one page image, in reading order.

    Attributes:
        text: the lines joined as running text.
        lines: the lines in reading order (boxes in the orientation of the image given).
        confidence: the recogniser's mean confidence, weighted by characters (0 when empty).
        turned: degrees the image was turned counter-clockwise to read it (0, 90, 180 or 270).
    """

    text: str
    lines: tuple[OcrLine, ...]
    confidence: float
    turned: int = 0


@functools.cache
def _engine() -> Any:
    from rapidocr import RapidOCR

    threads = max(1, len(os.sched_getaffinity(0)))
    return RapidOCR(
        params={
            "Global.log_level": "error",
            "Global.max_side_len": MAX_SIDE,
            # The per-line direction classifier squeezes a long line into 192 pixels and turned
            # right lines upside down (2-4% of a page's characters); direction is judged per page.
            "Global.use_cls": False,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )


def recognise(image: Any) -> OcrPage:
    """Read a page image (a PIL image); a page scanned sideways or upside down is turned first.

    RapidOCR turns a tall line crop a quarter turn counter-clockwise before reading it, so on a
    page lying on its side, lines that already read well say the page wants that turn, and
    lines that do not, the other. A page still read poorly is tried upside down.
    """
    page = _read(image, 0)
    if _sideways(page.lines):
        angle = 90 if page.confidence >= READABLE else 270
        page = _read(image.rotate(angle, expand=True), angle)
    if page.lines and page.confidence < READABLE:
        angle = (page.turned + 180) % 360
        flipped = _read(image.rotate(angle, expand=True), angle)
        if flipped.confidence > page.confidence:
            page = flipped
    return page


def _read(image: Any, turned: int) -> OcrPage:
    """Read an image as it is; lines are ordered and joined in the frame they were read in,
    then their boxes are given in the frame of the image before it was ``turned``."""
    import numpy as np

    rgb = np.asarray(eight_bit(image).convert("RGB"))
    height, width = rgb.shape[:2]
    result = _engine()(rgb[:, :, ::-1])  # RapidOCR expects OpenCV's BGR order
    if result.boxes is None or result.txts is None:
        return OcrPage("", (), 0.0, turned)
    lines = []
    for quad, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
        xs = [float(p[0]) for p in quad]
        ys = [float(p[1]) for p in quad]
        box = (min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height)
        if text.strip():
            lines.append(OcrLine(text.strip(), _clamp(box), float(score)))
    ordered = reading_order(lines)
    back = tuple(dataclasses.replace(x, box=_clamp(_upright(x.box, turned))) for x in ordered)
    return OcrPage(running_text(ordered), back, _confidence(ordered), turned)


def eight_bit(image: Any) -> Any:
    """An image of 16-bit or floating-point pixels scaled to 8 bits (Pillow's own conversion
    clips every value above 255 to white, and a 16-bit scan reads as a blank page)."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    scaled = values * (255.0 / top) if top > 255 else values
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _clamp(box: Box) -> Box:
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in box)
    return (x0, y0, x1, y1)


def _upright(box: Box, turned: int) -> Box:
    """A box found on an image turned ``turned`` degrees counter-clockwise, on the original."""
    x0, y0, x1, y1 = box
    if turned == 90:  # (u, v) on the original went to (v, 1 - u)
        return (1 - y1, x0, 1 - y0, x1)
    if turned == 270:  # (u, v) went to (1 - v, u)
        return (y0, 1 - x1, y1, 1 - x0)
    if turned == 180:  # (u, v) went to (1 - u, 1 - v)
        return (1 - x1, 1 - y1, 1 - x0, 1 - y0)
    return box


def _sideways(lines: Sequence[OcrLine]) -> bool:
    """Whether most detected lines stand upright: the page was scanned on its side."""
    if len(lines) < 3:
        return False
    tall = sum(1 for line in lines if _height(line.box) > 1.5 * _width(line.box))
    return tall > len(lines) / 2


def _confidence(lines: Sequence[OcrLine]) -> float:
    characters = sum(len(line.text) for line in lines)
    if not characters:
        return 0.0
    return sum(line.score * len(line.text) for line in lines) / characters


def _width(box: Box) -> float:
    return box[2] - box[0]


def _height(box: Box) -> float:
    return box[3] - box[1]


# --- reading order ------------------------------------------------------------------------


def reading_order(lines: Sequence[OcrLine]) -> list[OcrLine]:
    """Lines in the order a person reads them (a recursive XY-cut).

    A region is cut at a vertical channel of white space when the text on both sides fills its
    side as columns of running text do (so a table's cells are read row by row, not column by
    column), otherwise at its widest horizontal gap; a region that cannot be cut is one row,
    read left to right.
    """
    if not lines:
        return []
    height = statistics.median(_height(line.box) for line in lines)
    # The detector pads its boxes, so on normally spaced text one line's box ends where the
    # next begins and no gap is left to cut at: cut on each line's core instead.
    cores = [dataclasses.replace(line, box=_core(line.box)) for line in lines]
    back = {id(core): line for core, line in zip(cores, lines, strict=True)}
    return [back[id(core)] for core in _cut(cores, height)]


def _core(box: Box) -> Box:
    x0, y0, x1, y1 = box
    inset = (y1 - y0) / 4
    return (x0, y0 + inset, x1, y1 - inset)


def _cut(lines: list[OcrLine], height: float) -> list[OcrLine]:
    if len(lines) <= 1:
        return lines
    x_gap, x_at = _widest_gap(lines, 0)
    if x_at is not None and x_gap >= 0.8 * height:
        left = [line for line in lines if line.box[2] <= x_at]
        right = [line for line in lines if line.box[2] > x_at]
        if _columns(left, height) and _columns(right, height):
            return _cut(left, height) + _cut(right, height)
    _y_gap, y_at = _widest_gap(lines, 1)
    if y_at is not None:
        top = [line for line in lines if line.box[3] <= y_at]
        bottom = [line for line in lines if line.box[3] > y_at]
        return _cut(top, height) + _cut(bottom, height)
    return sorted(lines, key=lambda line: line.box[0])


def _widest_gap(lines: Sequence[OcrLine], axis: int) -> tuple[float, float | None]:
    """The widest empty band between the lines' projections on an axis, and where it starts."""
    spans = sorted((line.box[axis], line.box[axis + 2]) for line in lines)
    widest, at = 0.0, None
    reach = spans[0][1]
    for start, end in spans[1:]:
        if start - reach > widest:
            widest, at = start - reach, reach
        reach = max(reach, end)
    return widest, at


def _columns(lines: Sequence[OcrLine], height: float) -> bool:
    """Whether lines look like a column of running text: many characters wide, and most
    lines fill its width (a table's column is narrow, or its cells are ragged)."""
    if len(lines) < 2:
        return False
    left = min(line.box[0] for line in lines)
    right = max(line.box[2] for line in lines)
    if right - left < 12 * height:
        return False
    wide = sum(1 for line in lines if _width(line.box) >= 0.6 * (right - left))
    return wide >= 0.6 * len(lines)


def running_text(lines: Sequence[OcrLine]) -> str:
    """Join lines in reading order into text: lines of one paragraph run on, others break."""
    if not lines:
        return ""
    height = statistics.median(_height(line.box) for line in lines)
    parts = [lines[0].text]
    for before, line in itertools.pairwise(lines):
        parts.append(_joint(before, line, height))
        parts.append(line.text)
    return "".join(parts)


def _joint(before: OcrLine, line: OcrLine, height: float) -> str:
    same_row = line.box[1] < before.box[3] - 0.5 * _height(before.box)
    if same_row and line.box[0] >= before.box[2]:
        return " "  # the next cell of a table row, or a line the detector cut in two
    gap = line.box[1] - before.box[3]
    new_column = line.box[1] < before.box[1]
    if new_column or gap > 0.9 * height or before.text.endswith(_SENTENCE_END):
        return "\n"
    if _CJK.match(before.text[-1]) and _CJK.match(line.text[0]):
        return ""
    if before.text.endswith("-") and before.text[-2:-1].isalpha() and line.text[0].islower():
        return ""  # a word broken at the line's end ("Debian-" "based")
    return " "
