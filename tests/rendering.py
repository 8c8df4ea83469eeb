"""What a Markdown viewer would fetch to show a text: the yardstick of the injection test and
bench (a CommonMark renderer with raw HTML allowed, then the elements a browser loads)."""

from __future__ import annotations

from html.parser import HTMLParser

from markdown_it import MarkdownIt

FETCHED = {"src", "srcset", "data", "poster", "background", "style"}  # what a browser loads


class _Fetching(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # href loads a stylesheet or an icon on <link>; on <a> it waits for a click.
        urls = [v or "" for k, v in attrs if k in FETCHED or (k == "href" and tag != "a")]
        if urls:
            self.fetched.append(f"<{tag}> {' '.join(urls)}")


def render(markdown: str) -> str:
    """The HTML a CommonMark viewer that allows raw HTML makes of ``markdown``."""
    return str(MarkdownIt("commonmark", {"html": True}).render(markdown))


def fetched_when_rendered(markdown: str) -> list[str]:
    """The elements (tag and addresses) a browser would load to show ``markdown`` rendered."""
    parser = _Fetching()
    parser.feed(render(markdown))
    return parser.fetched
