"""Plain text and Markdown, streamed: a 200 MB file is never held in memory whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kb_assistant.loaders.base import LoadContext, Section, heading_path
from kb_assistant.loaders.encoding import detect_encoding

# A section is flushed at a paragraph break once it holds this many characters; the splitter
# cuts it into chunks, so this bounds memory, not chunk size.
SECTION_CHARS = 256 * 1024
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")


def _lines(path: Path) -> Iterator[str]:
    encoding = detect_encoding(path)
    # errors="replace": one bad byte in a huge file should not lose the whole file.
    with path.open("r", encoding=encoding, errors="replace", newline=None) as fh:
        yield from fh


def load_text(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream a plain-text file as sections cut at paragraph breaks."""
    buffer: list[str] = []
    size = 0
    for line in _lines(path):
        buffer.append(line)
        size += len(line)
        if (size >= SECTION_CHARS and not line.strip()) or size >= 4 * SECTION_CHARS:
            yield Section("".join(buffer))
            buffer, size = [], 0
    if buffer:
        yield Section("".join(buffer))


def load_markdown(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Stream a Markdown file as one section per heading (outside code fences)."""
    stack: list[str] = []
    buffer: list[str] = []
    size = 0
    in_fence = False
    for line in _lines(path):
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _MD_HEADING.match(line)
        if match or size >= SECTION_CHARS:
            if "".join(buffer).strip():
                yield Section("".join(buffer), heading=heading_path(stack))
            buffer, size = [], 0
        if match:
            level = len(match.group(1))
            del stack[level - 1 :]
            stack.extend([""] * (level - 1 - len(stack)))
            stack.append(match.group(2).strip())
            continue
        buffer.append(line)
        size += len(line)
    if "".join(buffer).strip():
        yield Section("".join(buffer), heading=heading_path(stack))
