"""What every loader produces: a stream of sections of text with where they came from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Section:
    """A run of text from one place in a document.

    Attributes:
        text: the text, in reading order.
        page: 1-based page (PDF) or slide (PPTX) number; None where a format has no pages.
        heading: the heading path above the text, outermost first ("Install > Networking").
        sheet: the spreadsheet sheet the rows came from.
    """

    text: str
    page: int | None = None
    heading: str | None = None
    sheet: str | None = None


@dataclass
class LoadContext:
    """Limits a loader obeys and facts it reports back while it streams sections."""

    max_rows: int = 100_000
    pages: int | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Record something the user should know about this file (e.g. truncation)."""
        if message not in self.notes:
            self.notes.append(message)


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
