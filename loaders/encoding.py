"""Text encoding detection for files that do not say what they are (GBK, Big5, UTF-16, ...)."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from kb_assistant.errors import CorruptDocument

SAMPLE_BYTES = 64 * 1024
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Detectors name the narrow legacy sets; their supersets decode the same bytes and more.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs", "ascii": "utf-8"}


def _samples(path: Path) -> list[bytes]:
    """Head, middle and tail of the file: a big file may be ASCII for its first megabytes."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= 3 * SAMPLE_BYTES:
            return [fh.read()]
        parts = []
        for offset in (0, size // 2, size - SAMPLE_BYTES):
            fh.seek(offset)
            parts.append(fh.read(SAMPLE_BYTES))
        return parts


def _utf16_without_bom(sample: bytes) -> str | None:
    """UTF-16 text without a BOM has NUL in every other byte for Latin text."""
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None


def _is_utf8(parts: list[bytes]) -> bool:
    continuation = bytes(range(0x80, 0xC0))
    try:
        for i, part in enumerate(parts):
            # A middle part may begin inside a multibyte sequence, and any part may end in one.
            start = part if i == 0 else part.lstrip(continuation)
            codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(path: Path) -> str:
    """Name the codec that decodes ``path``.

    Raises:
        CorruptDocument: the file is binary, not text.
    """
    return detect_bytes_encoding(_samples(path), str(path))


def detect_bytes_encoding(parts: list[bytes], where: str) -> str:
    """Name the codec for text whose samples (head, middle, tail) are ``parts``."""
    sample = b"".join(parts)
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    utf16 = _utf16_without_bom(sample)
    if utf16:
        return utf16
    if b"\x00" in sample:
        raise CorruptDocument(f"{where}: binary content, not text (contains NUL bytes)")
    if _is_utf8(parts):
        return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None or best.encoding is None:
        raise CorruptDocument(
            f"{where}: cannot tell the text encoding; save it as UTF-8 and ingest it again"
        )
    name = codecs.lookup(best.encoding).name
    return _SUPERSETS.get(name, name)


_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)


def detect_html_encoding(data: bytes, where: str) -> str:
    """The encoding an HTML page declares, else the one its bytes look like."""
    declared = _META_CHARSET.search(data[:4096])
    if declared:
        try:
            name = codecs.lookup(declared.group(1).decode("ascii")).name
            return _SUPERSETS.get(name, name)
        except LookupError:
            pass
    return detect_bytes_encoding([data[: 3 * SAMPLE_BYTES]], where)
