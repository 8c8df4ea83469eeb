"""Images: PNG, JPEG, TIFF (each page of a multi-page TIFF), BMP and WebP, read by OCR.

An image is judged by its header before a pixel is decoded: more than ``MAX_PIXELS`` pixels
(a 10,000 x 10,000 scan, or a "decompression bomb" PNG that declares huge dimensions in a few
bytes) is refused with its size, and so is a TIFF of more than ``MAX_FRAMES`` pages (a fax or
scan batch has tens; thousands of pages is a file built to keep the OCR busy for days). Images
inside DOCX and PPTX files are read the same way (``embedded_images``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb_assistant.errors import CorruptDocument, EmptyDocument, HostileDocument
from kb_assistant.loaders.base import LoadContext, Section

logger = logging.getLogger(__name__)
MAX_PIXELS = 50_000_000  # an A4 page at 600 dpi is 35 MP
MAX_FRAMES = 500  # pages of one TIFF
MIN_EMBEDDED_SIDE = 64  # pixels: icons and bullets inside documents are not read
MAX_EMBEDDED = 100  # images read from one DOCX or PPTX
OCR_CPU_PER_PAGE = 60.0  # processor seconds each image adds to the parser's limit
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


def load_image(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream the text of an image file, one section per page (TIFF) or one for the image.

    Raises:
        HostileDocument: more pixels than an image page may have, or too many pages.
        CorruptDocument: not an image Pillow can decode.
        EmptyDocument: OCR is off, or found no text.
    """
    if ctx.ocr == "never":
        raise EmptyDocument(
            f"{path}: an image has text only through OCR, which is off (ocr = never)"
        )
    with open_image(path, str(path)) as image:
        ctx.pages = total = getattr(image, "n_frames", 1)
        if total > MAX_FRAMES:
            raise HostileDocument(
                f"{path}: {total:,} pages in one image; at most {MAX_FRAMES} are read by OCR "
                "(split it into smaller files)"
            )
        confidences: list[float] = []
        problems: list[str] = []
        for number in range(1, total + 1):
            try:
                image.seek(number - 1)
                check_size(image, f"{path}: page {number}")
                section = _read(image, f"{path}: page {number}", ctx, page=number)
            except (OSError, ValueError, EOFError) as exc:
                logger.warning("%s: page %d unreadable, skipped (%s)", path, number, exc)
                ctx.note(f"page {number} unreadable")
                problems.append(str(exc))
                continue
            finally:
                ctx.page_done(number, total)
            if section.text.strip():
                confidences.append(section.ocr or 0.0)
                yield section
    if not confidences and len(problems) == total:
        raise CorruptDocument(f"{path}: not a readable image ({problems[0]})")
    if not confidences:
        raise EmptyDocument(f"{path}: OCR found no text in {total} page(s)")
    mean = sum(confidences) / len(confidences)
    ctx.note(f"text from OCR on {len(confidences)} of {total} page(s), confidence {mean:.2f}")


def embedded_images(path: Path, ctx: LoadContext, folder: str) -> Iterator[Section]:
    """The text of the images stored under ``folder`` of a DOCX/PPTX archive (``word/media/``).

    Small images (icons) and unreadable ones are passed over; an image over the pixel limit is
    noted and skipped: the document's own text still counts.
    """
    if ctx.ocr == "never":
        return
    import io

    with zipfile.ZipFile(path) as archive:
        names = [
            n for n in archive.namelist()
            if n.startswith(folder) and n.lower().endswith(_IMAGE_SUFFIXES)
        ]  # fmt: skip
        if len(names) > MAX_EMBEDDED:
            ctx.note(f"only the first {MAX_EMBEDDED} of {len(names)} images read by OCR")
        for name in names[:MAX_EMBEDDED]:
            label = name.rsplit("/", 1)[-1]
            try:
                image = open_image(io.BytesIO(archive.read(name)), f"{path}: {label}")
                if min(image.size) < MIN_EMBEDDED_SIDE:
                    continue
                section = _read(image, f"{path}: {label}", ctx, heading=f"[image {label}]")
            except (OSError, ValueError, EOFError) as exc:
                ctx.note(f"image {label} not read: {exc}")
                continue
            except (HostileDocument, CorruptDocument) as exc:
                ctx.note(f"image {label} not read: {str(exc).rsplit(': ', 1)[-1]}")
                continue
            if section.text.strip():
                yield section


def open_image(source: Any, where: str) -> Any:
    """Open an image, judging its size from the header before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, as a second line
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise HostileDocument(f"{where}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptDocument(
            f"{where}: not a readable image (not PNG, JPEG, TIFF, BMP or WebP data, or damaged)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise CorruptDocument(f"{where}: not a readable image ({exc})") from exc
    check_size(image, where)
    return image


def check_size(image: Any, where: str) -> None:
    """Refuse an image (or a TIFF's current page) of more than ``MAX_PIXELS`` pixels."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise HostileDocument(
            f"{where}: {width:,} x {height:,} pixels ({width * height / 1e6:,.0f} MP) is more "
            f"than the {MAX_PIXELS / 1e6:.0f} MP an image may have; scale it down"
        )


def _read(image: Any, where: str, ctx: LoadContext, **place: Any) -> Section:
    from PIL import Image

    from kb_assistant.loaders.ocr import recognise

    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise HostileDocument(f"{where}: {exc}") from exc
    ctx.extra_cpu_seconds += OCR_CPU_PER_PAGE
    result = recognise(image)
    lines = tuple((line.text, *line.box) for line in result.lines)
    return Section(result.text, lines=lines, ocr=round(result.confidence, 3), **place)
