"""Limits on what one file may cost, checked before and while it is parsed.

Before any parser opens a file (``inspect``):

- **ZIP containers** (DOCX, XLSX, PPTX, EPUB) are judged from their central directory alone:
  more than ``MAX_ENTRIES`` entries, ZIP64 records, declared sizes beyond ``MAX_DECLARED``, or
  expanding more than ``MAX_RATIO`` times (in all, or in one large entry) is refused. The
  declared sizes bind: Python's ``zipfile``, which every one of our parsers reads through,
  stops each entry at its declared size.
- **XML inside them** may not declare entities (the "billion laughs"): each part's prolog is
  read by expat up to the root element; a document type with entity declarations is refused.
  OOXML and EPUB never need one. (openpyxl also parses through defusedxml.)
- **PDF** streams are inflated, counting the output, up to ``inflation_limit``: a 300 KB file
  of compressed whitespace that would become 300 MB stops there, in a fraction of a second.

While the text streams (``Budget``): at most ``characters_for(size)`` characters per document
(text that outgrows its file ``CHARS_PER_BYTE``-fold is not a document, it is an attack or a
bug), then the rest is cut and the document marked "truncated".
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from xml.parsers import expat

from kb_assistant.errors import CorruptDocument, HostileDocument
from kb_assistant.loaders.base import LoadContext, Section

MAX_ENTRIES = 10_000
MAX_DECLARED = 2 << 30  # bytes, uncompressed, of one archive
MAX_RATIO = 100  # uncompressed : compressed
RATIO_FLOOR = 32 << 20  # bytes: archives and entries smaller than this expanded are fine
XML_SUFFIXES = (".xml", ".rels", ".xhtml", ".html", ".htm", ".opf", ".ncx", ".svg")
PROLOG_BYTES = 1 << 20  # an XML prolog longer than this is refused too
CHARS_PER_BYTE = 50
CHARS_FLOOR = 200_000
ZIP_FORMATS = {"docx", "xlsx", "pptx", "epub"}
_LIMIT = "decompression limit"


def inflation_limit(size: int) -> int:
    """Bytes a file of ``size`` bytes may expand to."""
    return max(RATIO_FLOOR, MAX_RATIO * size)


def characters_for(size: int) -> int:
    """Characters of text a file of ``size`` bytes may yield before it is truncated."""
    return max(CHARS_FLOOR, CHARS_PER_BYTE * size)


def inspect(path: Path, fmt: str) -> None:
    """Refuse a file whose structure is hostile, before a parser sees it.

    Raises:
        HostileDocument: past a decompression limit, or XML declaring entities.
        CorruptDocument: a ZIP container whose directory cannot be read.
    """
    if fmt in ZIP_FORMATS:
        inspect_zip(path, fmt)
    elif fmt == "pdf":
        inspect_pdf(path)


def inspect_zip(path: Path, fmt: str = "ZIP") -> None:
    """Judge a ZIP container by its central directory, then the prologs of its XML parts."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - (1 << 16) - 22 - 20))
        if b"PK\x06\x07" in fh.read():  # the ZIP64 end-of-directory locator
            raise HostileDocument(
                f"{path}: ZIP64 archive refused ({_LIMIT}: documents never need it)"
            )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CorruptDocument(
            f"{path}: damaged or not a {fmt.upper()} file (not a readable ZIP container: {exc})"
        ) from exc
    with archive, path.open("rb") as raw:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise HostileDocument(
                f"{path}: {len(entries)} entries in the archive (more than {MAX_ENTRIES}; {_LIMIT})"
            )
        declared = 0
        for info in entries:
            if _zip64(info.extra, info) or _zip64(_local_extra(raw, info), info):
                raise HostileDocument(f"{path}: ZIP64 entry {info.filename!r} refused ({_LIMIT})")
            declared += info.file_size
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
                raise HostileDocument(
                    f"{path}: {info.filename!r} expands {ratio:,.0f}:1 to "
                    f"{info.file_size:,} bytes ({_LIMIT} is {MAX_RATIO}:1)"
                )
        if declared > min(MAX_DECLARED, inflation_limit(size)):
            raise HostileDocument(
                f"{path}: expands to {declared:,} bytes from {size:,} ({_LIMIT} exceeded)"
            )
        for info in entries:
            if info.filename.lower().endswith(XML_SUFFIXES):
                with archive.open(info) as part:
                    _refuse_entities(part, f"{path}: {info.filename}")


def _local_extra(raw: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    """The extra field of an entry's local header (ZIP64 may be marked there only)."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return b""
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    raw.seek(name_length, 1)
    return raw.read(extra_length)


def _zip64(extra: bytes, info: zipfile.ZipInfo) -> bool:
    if max(info.file_size, info.compress_size, info.header_offset) >= 0xFFFFFFFF:
        return True
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        if kind == 0x0001:
            return True
        extra = extra[4 + length :]
    return False


class _Root(Exception):
    """The root element began: the prolog is over."""


def _refuse_entities(stream: object, where: str) -> None:
    """Read an XML part's prolog; refuse entity declarations (and DTDs with a subset)."""
    parser = expat.ParserCreate()
    declared: list[str] = []

    def entity(name: str, *_: object) -> None:
        declared.append(name)

    def root(*_: object) -> None:
        raise _Root

    parser.EntityDeclHandler = entity
    parser.StartElementHandler = root
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    read = 0
    try:
        while read < PROLOG_BYTES:
            block = stream.read(1 << 14)  # type: ignore[attr-defined]
            read += len(block)
            parser.Parse(block, not block)
            if declared:
                break
            if not block:
                return
    except _Root:
        if not declared:
            return
    except expat.ExpatError:
        return  # not well-formed: the parser that reads it reports that
    if declared:
        raise HostileDocument(
            f"{where} declares XML entities ({', '.join(declared[:3])}); refused as a possible "
            "entity-expansion bomb"
        )
    raise HostileDocument(f"{where}: XML prolog longer than {PROLOG_BYTES:,} bytes; refused")


_STREAM = re.compile(rb"stream\r?\n")


def inspect_pdf(path: Path) -> None:
    """Inflate every zlib stream of a PDF, counting, and stop at ``inflation_limit``."""
    size = path.stat().st_size
    if size == 0:
        return
    limit = inflation_limit(size)
    total = 0
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for match in _STREAM.finditer(data):
            start = match.end()
            if data[start : start + 1] not in (b"\x78", b"\x08", b"\x48", b"\x68"):
                continue  # not a zlib header: another filter, or no filter
            total += _inflated(data, start, limit - total)
            if total > limit:
                raise HostileDocument(
                    f"{path}: its streams expand past {limit:,} bytes from {size:,} "
                    f"({_LIMIT} exceeded; a PDF bomb?)"
                )


def _inflated(data: mmap.mmap, start: int, budget: int) -> int:
    """Bytes one zlib stream at ``start`` inflates to, counted up to ``budget + 1``."""
    inflater = zlib.decompressobj()
    out = 0
    position = start
    try:
        while (
            not inflater.eof
            and (position < len(data) or inflater.unconsumed_tail)
            and out <= budget
        ):
            block = inflater.unconsumed_tail or data[position : position + (1 << 16)]
            if not inflater.unconsumed_tail:
                position += len(block)
            out += len(inflater.decompress(block, 1 << 20))
    except zlib.error:
        pass  # a damaged stream: PDFium decides what to make of it
    return out


class Budget:
    """Cuts a document's sections at its character allowance, noting the truncation."""

    def __init__(self, size: int, ctx: LoadContext) -> None:
        self.limit = characters_for(size)
        self.ctx = ctx
        self.used = 0

    def apply(self, sections: Iterator[Section]) -> Iterator[Section]:
        """The sections, up to the allowance; the rest is not read."""
        for section in sections:
            room = self.limit - self.used
            if len(section.text) > room:
                if room > 0:
                    yield dataclasses.replace(section, text=section.text[:room])
                self.used = self.limit
                self.ctx.note(
                    f"truncated: only the first {self.limit:,} characters indexed (a file of "
                    f"this size yields at most {CHARS_PER_BYTE} characters per byte)"
                )
                return
            self.used += len(section.text)
            yield section
