"""Citations: keep only numbers that name a source the model was given, and list them.

``CitationFilter`` works on the stream, so what the user sees while the answer is written is
already clean: text inside square brackets is held back until the bracket closes, then a
citation to an unknown source is dropped (``[7]`` with five sources) and a mixed one trimmed
(``[2, 9]`` -> ``[2]``). ``infer_citations`` then attributes sentences the model left uncited
to the source that demonstrably contains their words, marked as inferred.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kb_assistant.loaders.splitter import split_sentences
from kb_assistant.vectorstore.keywords import content_words
from kb_assistant.vectorstore.knowledge_base import SearchHit


@dataclass(frozen=True)
class Citation:
    """A numbered passage of an answer: the document it comes from and where in it."""

    n: int
    source: str
    name: str
    page: int | None
    heading: str | None
    sheet: str | None
    text: str
    inferred: bool = False
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # the passage's lines on its page
    ocr: float | None = None  # OCR confidence, when the page was read from an image

    @classmethod
    def from_hit(cls, n: int, hit: SearchHit, *, inferred: bool = False) -> Citation:
        """Passage ``n`` of an answer, from the chunk retrieval found."""
        c = hit.chunk
        return cls(
            n, c.source, c.name, c.page, c.heading, c.sheet, c.text, inferred, c.boxes, c.ocr
        )

    def to_json(self) -> dict[str, Any]:
        """The stable machine-readable form (``--json``)."""
        return {
            "n": self.n, "source": self.source, "name": self.name, "page": self.page,
            "heading": self.heading, "sheet": self.sheet, "text": self.text,
            "inferred": self.inferred, "boxes": [list(b) for b in self.boxes], "ocr": self.ocr,
        }  # fmt: skip


_CITATION = re.compile(r"[\[【]\s*(\d+(?:\s*[,，、;]\s*\d+)*)\s*[\]】]")
_OPEN_CITATION = re.compile(r"\s*[\[【]\s*[\d,，、;\s]*")
_OPENERS = "[【"
_HOLD_LIMIT = 24  # a bracket still open after this many characters is not a citation


def _clean_match(match: re.Match[str], valid: set[int]) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
    kept = list(dict.fromkeys(n for n in numbers if n in valid))
    return "".join(f"[{n}]" for n in kept)


def without_citations(text: str) -> str:
    """``text`` with its citation marks (``[1]``, ``[2, 3]``, ``【1】``) replaced by spaces."""
    return _CITATION.sub(" ", text)


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in ``text``, in order of first citation."""
    found = (int(n) for m in _CITATION.finditer(text) for n in re.findall(r"\d+", m.group(1)))
    return list(dict.fromkeys(found))


class CitationFilter:
    """Cleans citations in a stream of text pieces."""

    def __init__(self, valid: set[int]) -> None:
        self.valid = valid
        self._held = ""

    def feed(self, piece: str) -> str:
        """Text that can be shown now."""
        self._held += piece
        out = ""
        while self._held:
            start = min((i for i in (self._held.find(c) for c in _OPENERS) if i >= 0), default=-1)
            if start < 0:
                # Trailing space may precede a citation in the next piece: hold it.
                kept = self._held.rstrip()
                out, self._held = out + kept, self._held[len(kept) :]
                break
            before = self._held[:start]
            kept = before.rstrip()
            # Hold the space before a bracket too: it goes if the citation goes.
            out, self._held = out + kept, self._held[len(kept) :]
            space = len(before) - len(kept)
            close = min((i for i in (self._held.find(c) for c in "]】") if i >= 0), default=-1)
            if close < 0:
                if len(self._held) - space > _HOLD_LIMIT:  # not a citation: let it through
                    out, self._held = out + self._held[: space + 1], self._held[space + 1 :]
                    continue
                break
            bracket, self._held = self._held[space : close + 1], self._held[close + 1 :]
            match = _CITATION.fullmatch(bracket)
            cleaned = _clean_match(match, self.valid) if match else bracket
            out += before[len(kept) :] + cleaned if cleaned else ""
        return out

    def flush(self) -> str:
        """Whatever is still held at the end of the stream (a cut-off citation is dropped)."""
        rest, self._held = self._held, ""
        return "" if rest.strip() and _OPEN_CITATION.fullmatch(rest) else rest


@dataclass(frozen=True)
class Attribution:
    """A source backing the answer."""

    n: int
    inferred: bool  # True: the model did not cite it; its words are in the answer


def infer_citations(
    answer: str, sources: dict[int, str], *, min_words: int = 4, min_overlap: float = 0.6
) -> list[Attribution]:
    """Sources cited in the answer, then sources whose words make up an uncited sentence."""
    cited = [Attribution(n, False) for n in cited_numbers(answer) if n in sources]
    known = {a.n for a in cited}
    vocab = {n: set(content_words(text)) for n, text in sources.items()}
    for sentence in split_sentences(answer):
        if _CITATION.search(sentence):
            continue
        words = set(content_words(sentence))
        if len(words) < min_words:
            continue
        best, share = max(
            ((n, len(words & v) / len(words)) for n, v in vocab.items()),
            key=lambda pair: pair[1],
            default=(0, 0.0),
        )
        if share >= min_overlap and best not in known:
            cited.append(Attribution(best, True))
            known.add(best)
    return cited
