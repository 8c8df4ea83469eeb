"""Pages as pictures: a PDF page (PDFium) or an image's page, with passages highlighted.

The app shows a cited passage where it stands: the page is rendered from the file the
knowledge base was built from, and the passage's line boxes (normalised to the page, stored
with each chunk) are drawn over it. Nothing is fetched; the caller caches the pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb_assistant.errors import CorruptDocument, DocumentNotFound, UnsupportedFormat

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MAX_WIDTH = 2000  # pixels of a rendering
_FILL = (255, 213, 0, 90)
_EDGE = (230, 120, 0, 255)


def can_render(source: str) -> bool:
    """Whether pages of this file can be shown as pictures (PDFs and images)."""
    return Path(source).suffix.lower() in (".pdf", *IMAGE_SUFFIXES)


def page_count(source: str) -> int:
    """Pages of a PDF, or of an image (a TIFF may have several).

    Raises:
        DocumentNotFound: the file is no longer where it was ingested from.
        UnsupportedFormat: not a PDF or an image.
        CorruptDocument, HostileDocument: it cannot be opened any more, or is too large.
    """
    path = _existing(source)
    if path.suffix.lower() == ".pdf":
        document = _pdf(path)
        try:
            return len(document)
        finally:
            document.close()
    with _image(path) as image:
        return int(getattr(image, "n_frames", 1))


def render_page(source: str, page: int, *, width: int = 1000) -> Any:
    """Page ``page`` (1-based) of a PDF or an image file as an RGB PIL image ``width`` wide.

    Raises:
        DocumentNotFound, UnsupportedFormat, CorruptDocument, HostileDocument: as
            ``page_count``; a page out of range is CorruptDocument too.
    """
    import pypdfium2 as pdfium
    from PIL import Image

    from kb_assistant.loaders.image import check_size
    from kb_assistant.loaders.ocr import eight_bit

    path = _existing(source)
    width = max(100, min(width, MAX_WIDTH))
    if path.suffix.lower() == ".pdf":
        document = _pdf(path)
        try:
            if not 1 <= page <= len(document):
                raise CorruptDocument(f"{path}: has no page {page}")
            pdf_page = document[page - 1]
            w, h = pdf_page.get_size()
            # At most MAX_WIDTH on either side: a page 30 pt wide and 14,400 pt tall would
            # otherwise become a bitmap of gigabytes.
            scale = min(width / max(1.0, w), MAX_WIDTH / max(1.0, h))
            return pdf_page.render(scale=scale).to_pil().convert("RGB")
        except pdfium.PdfiumError as exc:
            raise CorruptDocument(f"{path}: page {page} cannot be drawn ({exc})") from exc
        finally:
            document.close()
    with _image(path) as image:
        try:
            if not 1 <= page <= getattr(image, "n_frames", 1):
                raise CorruptDocument(f"{path}: has no page {page}")
            image.seek(page - 1)
            check_size(image, f"{path}: page {page}")
            frame = eight_bit(image).convert("RGB")
        except (OSError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise CorruptDocument(f"{path}: page {page} cannot be drawn ({exc})") from exc
    height = max(1, round(frame.height * width / max(1, frame.width)))
    if height > MAX_WIDTH:
        width, height = max(1, round(width * MAX_WIDTH / height)), MAX_WIDTH
    return frame.resize((width, height))


def highlight(picture: Any, boxes: Sequence[Sequence[float]]) -> Any:
    """A copy of ``picture`` with each box (0..1 of the page) filled and outlined."""
    from PIL import Image, ImageDraw

    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    width, height = picture.size
    pad = max(2, width // 300)
    for x0, y0, x1, y1 in boxes:
        rect = (x0 * width - pad, y0 * height - pad, x1 * width + pad, y1 * height + pad)
        draw.rectangle(rect, fill=_FILL, outline=_EDGE, width=max(1, pad // 2))
    return Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")


def _existing(source: str) -> Path:
    path = Path(source)
    if not can_render(source):
        raise UnsupportedFormat(f"{path}: only PDF and image pages can be shown")
    if not path.is_file():
        raise DocumentNotFound(f"{path}: the file is no longer there (moved or deleted)")
    return path


def _pdf(path: Path) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        raise CorruptDocument(f"{path}: cannot be opened ({exc})") from exc


def _image(path: Path) -> Any:
    from kb_assistant.loaders.image import open_image

    return open_image(path, str(path))  # the same size checks as ingest
