"""Turn files into sections of text, and sections into chunks.

The public surface: ``load_sections`` (dispatch by file extension), ``SUPPORTED_EXTENSIONS``,
``Section``/``LoadContext``, and the splitter (``ChunkSplitter``, ``Chunk``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

from kb_assistant.errors import UnsupportedFormat
from kb_assistant.loaders.base import LoadContext, Loader, Section
from kb_assistant.loaders.splitter import Chunk, ChunkSplitter, TokenCounter

# extension -> (format family, "module:function"); modules are imported on first use so that
# listing formats (and `kb --help`) does not import every parser.
_FORMATS: dict[str, tuple[str, str]] = {
    ".pdf": ("pdf", "kb_assistant.loaders.pdf:load_pdf"),
    ".docx": ("docx", "kb_assistant.loaders.docx:load_docx"),
    ".txt": ("text", "kb_assistant.loaders.text:load_text"),
    ".text": ("text", "kb_assistant.loaders.text:load_text"),
    ".log": ("text", "kb_assistant.loaders.text:load_text"),
    ".md": ("markdown", "kb_assistant.loaders.text:load_markdown"),
    ".markdown": ("markdown", "kb_assistant.loaders.text:load_markdown"),
    ".html": ("html", "kb_assistant.loaders.html:load_html"),
    ".htm": ("html", "kb_assistant.loaders.html:load_html"),
    ".xhtml": ("html", "kb_assistant.loaders.html:load_html"),
    ".csv": ("csv", "kb_assistant.loaders.tabular:load_csv"),
    ".tsv": ("csv", "kb_assistant.loaders.tabular:load_csv"),
    ".xlsx": ("xlsx", "kb_assistant.loaders.tabular:load_xlsx"),
    ".pptx": ("pptx", "kb_assistant.loaders.unstructured_formats:load_pptx"),
    ".epub": ("epub", "kb_assistant.loaders.unstructured_formats:load_epub"),
    ".png": ("image", "kb_assistant.loaders.image:load_image"),
    ".jpg": ("image", "kb_assistant.loaders.image:load_image"),
    ".jpeg": ("image", "kb_assistant.loaders.image:load_image"),
    ".tif": ("image", "kb_assistant.loaders.image:load_image"),
    ".tiff": ("image", "kb_assistant.loaders.image:load_image"),
    ".bmp": ("image", "kb_assistant.loaders.image:load_image"),
    ".webp": ("image", "kb_assistant.loaders.image:load_image"),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)


def is_supported(path: Path) -> bool:
    """Whether a file's extension names a format we read."""
    return path.suffix.lower() in SUPPORTED_EXTENSIONS


def format_of(path: Path) -> str:
    """The format family of a file, e.g. 'pdf' or 'markdown'.

    Raises:
        UnsupportedFormat: the extension is not one we read.
    """
    return _loader_for(path)[0]


def loader_of(path: Path) -> tuple[str, str]:
    """The format family and the ``module:function`` that reads a file.

    Raises:
        UnsupportedFormat: the extension is not one we read.
    """
    entry = _FORMATS.get(path.suffix.lower())
    if entry is None:
        kind = path.suffix.lower() or "(no extension)"
        raise UnsupportedFormat(
            f"{path}: unsupported file type '{kind}'; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return entry


def load_sections(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream the sections of one file.

    Raises:
        UnsupportedFormat: the extension is not one we read.
        IngestError: the file is empty, encrypted, damaged or unreadable.
    """
    return _loader_for(path)[1](path, ctx)


def _loader_for(path: Path) -> tuple[str, Loader]:
    family, target = loader_of(path)
    module, function = target.split(":")
    loader: Loader = getattr(importlib.import_module(module), function)
    return family, loader


__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "ChunkSplitter",
    "LoadContext",
    "Section",
    "TokenCounter",
    "format_of",
    "is_supported",
    "load_sections",
    "loader_of",
]
