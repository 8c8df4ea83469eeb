"""Files that arrive through the web page: names, types and sizes, checked on our side.

Nothing of a browser's file name is trusted. It is kept only as an escaped label (control
and direction-changing characters written as ``\\uXXXX``, at most 200 characters); the file is
stored under a generated name, ``<content hash>/upload<ext>``, inside the data directory. The
type is decided by the content's leading bytes, not by the name or the widget's ``type=``
filter: a PDF must start like a PDF, an Office file must be a ZIP holding that format's main
part, a text format must hold text. Sizes are checked per file and per browser session before
anything is parsed.
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
from pathlib import PurePosixPath

from kb_assistant.errors import UploadRejected
from kb_assistant.loaders import SUPPORTED_EXTENSIONS

NAME_CHARS = 200
_ZIP_PARTS = {
    ".docx": "word/document.xml",
    ".xlsx": "xl/workbook.xml",
    ".pptx": "ppt/presentation.xml",
    ".epub": "mimetype",
}
_IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    ".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
    ".tif": (b"II*\x00", b"MM\x00*"), ".tiff": (b"II*\x00", b"MM\x00*"), ".bmp": (b"BM",),
}  # fmt: skip
_BINARY_MAGIC = {
    b"%PDF-": "a PDF", b"PK\x03\x04": "a ZIP archive", b"\x7fELF": "a program",
    b"MZ": "a Windows program", b"\x1f\x8b": "gzip data", b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"SQLite format 3": "a database",
}  # fmt: skip


def label(name: str) -> str:
    """The uploaded name as a label: every character that could hide or reorder text escaped."""
    out = []
    for char in name:
        category = unicodedata.category(char)
        if category in {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    text = "".join(out).strip() or "upload"
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 1] + "…"


def extension(name: str) -> str:
    """The lower-case extension of an uploaded name, whatever path it pretends to have."""
    base = PurePosixPath(name.replace("\\", "/").replace("\x00", "")).name
    return PurePosixPath(base).suffix.lower()


def check(name: str, data: bytes, *, max_bytes: int) -> str:
    """Validate one upload; returns the extension it will be stored with.

    Raises:
        UploadRejected: too large, of an unsupported type, or not what its name says.
    """
    shown = label(name)
    if len(data) > max_bytes:
        raise UploadRejected(
            f"'{shown}' is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB "
            "per file"
        )
    ext = extension(name)
    if ext not in SUPPORTED_EXTENSIONS:
        raise UploadRejected(
            f"'{shown}': unsupported file type '{ext or '(none)'}'; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
        )
    found = content_kind(data, ext)
    if found is not None:
        raise UploadRejected(f"'{shown}' is named {ext} but its content is {found}; refused")
    return ext


def content_kind(data: bytes, ext: str) -> str | None:
    """None when ``data`` looks like a file of type ``ext``; else what it looks like instead."""
    head = data[:8192]
    if ext == ".pdf" or ext in _IMAGE_MAGIC or ext == ".webp":
        return None if _is_binary_kind(data, ext) else _describe(head)
    if ext in _ZIP_PARTS:
        if not head.startswith(b"PK\x03\x04"):
            return _describe(head)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, ValueError, EOFError):
            return "a damaged ZIP archive"
        return None if _ZIP_PARTS[ext] in names else f"a ZIP archive without {_ZIP_PARTS[ext]}"
    # Text formats: no binary signature, and no NUL bytes unless the text is UTF-16.
    for magic, kind in _BINARY_MAGIC.items():
        if head.startswith(magic):
            return kind
    utf16 = head.startswith((b"\xff\xfe", b"\xfe\xff"))
    return "binary data" if b"\x00" in head and not utf16 else None


def _is_binary_kind(head: bytes, ext: str) -> bool:
    if ext == ".pdf":
        return b"%PDF-" in head[:1024]
    if ext == ".webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return head.startswith(_IMAGE_MAGIC[ext])


def _describe(head: bytes) -> str:
    for magic, kind in _BINARY_MAGIC.items():
        if head.startswith(magic):
            return kind
    return "something else"


def check_batch(sizes: list[int], used: int, *, max_file: int, max_session: int) -> None:
    """Refuse a batch, before reading it, that breaks the per-file or per-session limit.

    Raises:
        UploadRejected: naming the limit and what is left of it.
    """
    big = [s for s in sizes if s > max_file]
    if big:
        raise UploadRejected(
            f"{len(big)} file(s) are over the {max_file / 2**20:.0f} MB limit per file"
        )
    if used + sum(sizes) > max_session:
        left = max(0, max_session - used)
        raise UploadRejected(
            f"these files ({sum(sizes) / 2**20:.1f} MB) would pass this session's upload limit "
            f"of {max_session / 2**20:.0f} MB ({left / 2**20:.1f} MB left); reload the page to "
            "start a new session"
        )
