"""HTML: visible text, split into sections at headings (h1-h6)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kb_assistant.errors import CorruptDocument
from kb_assistant.loaders.base import LoadContext, Section, heading_path
from kb_assistant.loaders.encoding import detect_html_encoding

_DROP = {"script", "style", "noscript", "template", "nav", "svg", "head", "iframe", "object"}
_BLOCK = {
    "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "pre", "blockquote", "table", "tr",
    "section", "article", "header", "footer", "aside", "br", "hr", "figure", "figcaption",
    "main", "form", "address", "caption", "tbody", "thead",
}  # fmt: skip
_CELL = {"td", "th"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
# Marks a heading inside the flattened text: a private-use character, stripped from titles.
_MARK = "\ue000"
_SPACE_RUN = re.compile(r"\s+")
_MARKED = re.compile(rf"{_MARK}(\d){_MARK}(.*?){_MARK}")


def load_html(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """Read an HTML file as sections, one per heading."""
    return html_sections(path.read_bytes(), str(path))


def html_sections(data: bytes, where: str) -> Iterator[Section]:
    """Flatten HTML bytes to text and cut it into sections at its headings."""
    import lxml.etree
    import lxml.html

    # No network, no entity expansion from DTDs: HTML from anywhere is untrusted.
    parser = lxml.html.HTMLParser(
        encoding=detect_html_encoding(data, where),
        remove_comments=True,
        remove_pis=True,
        no_network=True,
        huge_tree=False,
    )
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise CorruptDocument(f"{where}: not readable as HTML ({exc})") from exc
    text = _flatten(root)
    return _cut_at_headings(text)


def _flatten(root: object) -> str:
    from lxml import etree

    preformatted = {node for pre in root.iter("pre") for node in pre.iter()}  # type: ignore[attr-defined]
    for el in list(root.iter()):  # type: ignore[attr-defined]
        if not isinstance(el.tag, str):
            continue
        if el not in preformatted:
            # Line breaks in HTML source are spaces; only block boundaries (below) break lines.
            el.text = _SPACE_RUN.sub(" ", el.text) if el.text else el.text
        if el.tail and (el.getparent() not in preformatted):
            el.tail = _SPACE_RUN.sub(" ", el.tail)
        tag = el.tag.lower()
        if tag in _DROP:
            el.drop_tree()
        elif tag in _HEADINGS:
            title = " ".join(el.text_content().split()).replace(_MARK, "")
            tail = el.tail
            el.clear()
            el.text = f"\n{_MARK}{_HEADINGS[tag]}{_MARK}{title}{_MARK}\n"
            el.tail = tail
        elif tag in _BLOCK:
            el.tail = "\n" + (el.tail or "")
            el.text = "\n" + (el.text or "")
        elif tag in _CELL:
            previous = el.getprevious()
            if previous is not None and isinstance(previous.tag, str) and previous.tag in _CELL:
                el.text = " | " + (el.text or "")
    body = root.find("body")  # type: ignore[attr-defined]
    text: str = etree.tostring(
        body if body is not None else root, method="text", encoding="unicode"
    )
    return text


def _cut_at_headings(text: str) -> Iterator[Section]:
    stack: list[str] = []
    position = 0
    for match in _MARKED.finditer(text):
        body = _tidy(text[position : match.start()])
        if body:
            yield Section(body, heading=heading_path(stack))
        level, title = int(match.group(1)), match.group(2).strip()
        del stack[level - 1 :]
        stack.extend([""] * (level - 1 - len(stack)))
        stack.append(title)
        position = match.end()
    body = _tidy(text[position:])
    if body:
        yield Section(body, heading=heading_path(stack))


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
