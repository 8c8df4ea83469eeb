"""Cut sections into chunks measured in tokens of the embedding model, Chinese-aware.

Text is first cut into sentences, on Chinese sentence punctuation (。！？；…) as well as on
English sentence ends and line breaks, then sentences are packed into chunks of at most
``chunk_tokens`` tokens; each chunk starts with up to ``overlap_tokens`` tokens of the previous
chunk's last sentences. A sentence longer than a chunk is cut at token boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from kb_assistant.loaders.base import Line, Section

Box = tuple[float, float, float, float]

# Zero-width cut points: after Chinese enders (or the closing quote/bracket that follows one),
# after English enders followed by whitespace, and after a line break.
_SENTENCE_CUT = re.compile(
    r"(?<=[。！？；…!?])(?![。！？；…!?”’」』）)\]\"'])"
    r"|(?<=[。！？；…!?][”’」』）)\]\"'])(?![”’」』）)\]\"'])"
    r"|(?<=[.;:])(?=\s)"
    r"|(?<=\n)"
)
# PDF tables of contents: "Title . . . . . . . 42" would cost dozens of tokens per line.
_LEADERS = re.compile(r"(?:\s*[.·•_-]){4,}\s*")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u3000]+")
_WHITESPACE = re.compile(r"\s+")
_TABLE_RULE = re.compile(r"^\|(?:\s*:?-{3,}:?\s*\|)+$")


class TokenCounter(Protocol):
    """Counts and cuts text in the tokens of an embedding model."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text (no special tokens)."""
        ...

    def cut(self, text: str, max_tokens: int) -> list[str]:
        """Cut ``text`` into consecutive pieces of at most ``max_tokens`` tokens."""
        ...


@dataclass(frozen=True)
class Chunk:
    """A piece of a section, ready to embed.

    Attributes:
        text: the chunk's own text (what is shown and cited).
        tokens: its length in embedding-model tokens.
        page, heading, sheet: where it came from (copied from its section).
        boxes: where its lines lie on the page (PDF pages and images; 0..1, top-left origin).
        ocr: the OCR confidence of its page, when its text was read from an image.
    """

    text: str
    tokens: int
    page: int | None = None
    heading: str | None = None
    sheet: str | None = None
    boxes: tuple[Box, ...] = ()
    ocr: float | None = None

    @property
    def embed_text(self) -> str:
        """What is embedded and keyword-indexed: the heading path gives the chunk its topic."""
        return embed_text(self.text, self.heading, self.sheet)


def embed_text(text: str, heading: str | None, sheet: str | None) -> str:
    """A chunk's text with its sheet and heading path in front."""
    context = " / ".join(p for p in (sheet, heading) if p)
    return f"{context}\n{text}" if context else text


def normalise_text(text: str) -> str:
    """Collapse runs of spaces, dot leaders and blank lines; keep paragraph breaks."""
    text = _LEADERS.sub(" … ", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def split_sentences(text: str) -> list[str]:
    """Cut text into sentences; joining the result gives the text back."""
    return [piece for piece in _SENTENCE_CUT.split(text) if piece]


class ChunkSplitter:
    """Packs sentences into token-bounded, overlapping chunks."""

    def __init__(self, counter: TokenCounter, chunk_tokens: int, overlap_tokens: int) -> None:
        if not 0 <= overlap_tokens < chunk_tokens:
            raise ValueError("overlap_tokens must be >= 0 and smaller than chunk_tokens")
        self.counter = counter
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def split_sections(self, sections: Iterator[Section]) -> Iterator[Chunk]:
        """Chunks of every section in order; chunks never straddle two sections."""
        for section in sections:
            pieces = (
                self.split_table(section.text)
                if is_markdown_table(section.text)
                else self.split_text(section.text)
            )
            where = LineMap(section.text, section.lines) if section.lines else None
            for text, tokens in pieces:
                boxes = where.boxes(text) if where is not None else ()
                yield Chunk(
                    text, tokens, section.page, section.heading, section.sheet, boxes, section.ocr
                )

    def split_table(self, table: str) -> Iterator[tuple[str, int]]:
        """Cut a Markdown table between rows; every chunk starts with its header row."""
        rows = table.strip().split("\n")
        header = "\n".join(rows[:2])
        [header_tokens, *row_tokens] = self.counter.count([header, *rows[2:]])
        if header_tokens + 1 > self.chunk_tokens // 2:  # a header that leaves no room: as text
            yield from self.split_text(table)
            return
        window: list[str] = []
        size = header_tokens
        for row, tokens in zip(rows[2:], row_tokens, strict=True):
            if window and size + tokens + 1 > self.chunk_tokens:
                yield "\n".join([header, *window]), size
                window, size = [], header_tokens
            if header_tokens + tokens + 1 > self.chunk_tokens:  # one row past a chunk: as text
                yield from self.split_text(row)
                continue
            window.append(row)
            size += tokens + 1
        if window:
            yield "\n".join([header, *window]), size

    def split_text(self, text: str) -> Iterator[tuple[str, int]]:
        """Yield ``(chunk_text, token_count)`` pairs for one run of text."""
        window: list[tuple[str, int]] = []
        size = 0
        fresh = False  # whether the window holds text not yet emitted
        for piece, tokens in self._pieces(normalise_text(text)):
            if size + tokens > self.chunk_tokens:
                if fresh:
                    yield from self._emit(window)
                    window, size = self._overlap(window)
                if size + tokens > self.chunk_tokens:
                    window, size = [], 0
                fresh = False
            window.append((piece, tokens))
            size += tokens
            fresh = fresh or bool(piece.strip())
        if fresh:
            yield from self._emit(window)

    def _pieces(self, text: str) -> list[tuple[str, int]]:
        sentences = split_sentences(text)
        counts = self.counter.count(sentences)
        pieces: list[tuple[str, int]] = []
        for sentence, tokens in zip(sentences, counts, strict=True):
            if tokens <= self.chunk_tokens:
                pieces.append((sentence, tokens))
                continue
            parts = self.counter.cut(sentence, self.chunk_tokens)
            pieces.extend(zip(parts, self.counter.count(parts), strict=True))
        return pieces

    def _overlap(self, window: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], int]:
        """The trailing sentences of ``window`` that fit in the overlap budget."""
        kept: list[tuple[str, int]] = []
        size = 0
        for piece, tokens in reversed(window):
            if size + tokens > self.overlap_tokens:
                break
            kept.insert(0, (piece, tokens))
            size += tokens
        return kept, size

    @staticmethod
    def _emit(window: list[tuple[str, int]]) -> Iterator[tuple[str, int]]:
        text = "".join(p for p, _ in window).strip()
        if text:
            yield text, sum(t for _, t in window)


def is_markdown_table(text: str) -> bool:
    """Whether ``text`` is one Markdown table (a header row, a rule, then rows)."""
    rows = text.strip().split("\n")
    return len(rows) >= 3 and rows[0].startswith("|") and bool(_TABLE_RULE.match(rows[1]))


class LineMap:
    """Finds the lines (and so the boxes) a chunk of a section's text came from.

    Chunks are runs of the section's normalised text, and lines are runs of its raw text, so
    both are found in the section's text with all whitespace removed, in order. A Markdown
    table's chunks repeat its header, so its lines are its rows, found by their text; a
    section of one line gives its box to each of its chunks.
    """

    def __init__(self, text: str, lines: tuple[Line, ...]) -> None:
        self.text = _WHITESPACE.sub("", normalise_text(text))
        self.whole: tuple[Box, ...] = ((lines[0][1:]),) if len(lines) == 1 else ()
        self.rows: dict[str, list[Box]] | None = None
        if is_markdown_table(text):
            self.rows = {}
            for line in lines:
                self.rows.setdefault(line[0], []).append(line[1:])
        self.spans: list[tuple[int, int, Box]] = []
        cursor = 0
        for line in lines:
            squeezed = _WHITESPACE.sub("", line[0])
            at = self.text.find(squeezed, cursor) if squeezed else -1
            if at >= 0:
                self.spans.append((at, at + len(squeezed), line[1:]))
                cursor = at + len(squeezed)
        self.cursor = 0

    def boxes(self, chunk: str) -> tuple[Box, ...]:
        """The boxes of the lines ``chunk`` overlaps (chunks come in order)."""
        if self.whole:
            return self.whole
        if self.rows is not None:
            found = dict.fromkeys(b for row in chunk.split("\n") for b in self.rows.get(row, ()))
            return tuple(found)
        squeezed = _WHITESPACE.sub("", chunk)
        at = self.text.find(squeezed, self.cursor)
        if at < 0 or not squeezed:
            return ()
        self.cursor = at + 1
        end = at + len(squeezed)
        return tuple(box for start, stop, box in self.spans if start < end and stop > at)
