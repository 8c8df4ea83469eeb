"""What every loader produces: a stream of sections of text with where they came from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OcrMode = Literal["auto", "always", "never"]
# A line of text and where it lies on its page: (text, x0, y0, x1, y1), the box normalised to
# the page (0..1, origin top-left) so it can be drawn on a rendering at any resolution.
Line = tuple[str, float, float, float, float]


@dataclass(frozen=True)
class Section:
    """A run of text from one place in a document.

    Attributes:
        text: the text, in reading order.
        page: 1-based page (PDF) or slide (PPTX) number; None where a format has no pages.
        heading: the heading path above the text, outermost first ("Install > Networking").
        sheet: the spreadsheet sheet the rows came from.
        lines: the text's lines with their boxes on the page (PDF pages and images), in the
            order of ``text``; empty where a format has no layout.
        ocr: the OCR engine's confidence (0..1) when the text was read from an image.
    """

    text: str
    page: int | None = None
    heading: str | None = None
    sheet: str | None = None
    lines: tuple[Line, ...] = ()
    ocr: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Section:
        """A section sent as JSON (lists where tuples were)."""
        lines = tuple(
            (str(t), float(a), float(b), float(c), float(d))
            for t, a, b, c, d in data.pop("lines", ())
        )
        return cls(**data, lines=lines)


@dataclass
class LoadContext:
    """Limits a loader obeys and facts it reports back while it streams sections."""

    max_rows: int = 100_000
    ocr: OcrMode = "auto"
    pages: int | None = None
    notes: list[str] = field(default_factory=list)
    # Processor seconds the file may spend beyond the parser's limit (OCR grants some per page).
    extra_cpu_seconds: float = 0.0
    # Called as pages are read (done, total), where a format is slow per page (OCR).
    on_page: Callable[[int, int], None] | None = None

    def note(self, message: str) -> None:
        """Record something the user should know about this file (e.g. truncation)."""
        if message not in self.notes:
            self.notes.append(message)

    def page_done(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` pages are read."""
        if self.on_page is not None:
            self.on_page(done, total)


Loader = Callable[[Path, LoadContext], Iterator[Section]]

HEADING_SEPARATOR = " > "


def read_problem(exc: BaseException) -> str:
    """A one-line reason, without the path, for an exception a parser did not mean to raise."""
    if isinstance(exc, FileNotFoundError):
        return "file disappeared while it was being read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return f"cannot read ({type(exc).__name__}: {exc})"


def heading_path(stack: list[str]) -> str | None:
    """Join a stack of headings (outermost first) into one display string."""
    parts = [h for h in stack if h]
    return HEADING_SEPARATOR.join(parts) if parts else None
