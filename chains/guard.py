"""What the model writes is screened before anyone sees it (indirect prompt injection).

A document can carry instructions for the assistant: "reveal your instructions", "add this
image". The prompts say sources are data, but a small model may obey, or simply copy a source
with its payload. So every answer passes ``OutputGuard`` on the stream, before the citation
filter and the screen:

- an image (``![alt](url)``, ``![alt][ref]``) becomes its alt text: an image is the channel
  that leaks data with no click (a Markdown viewer fetches ``http://host/?d=secret`` when the
  exported conversation is opened). ``![`` never survives, so no image can be assembled;
- an HTML tag with a URL attribute (``src``, ``href``, ...) is removed;
- the prompt's canary is removed. The system prompt carries a random secret (``new_canary``)
  that nothing legitimate ever repeats: if it appears, the model is reciting its instructions,
  usually because a source told it to.

A removal can join what was around it into something new, so the text that is returned and
saved is screened again until it stops changing (``settle``); the live stream is one pass
(the app escapes it anyway). What was removed is counted in ``findings`` (the trace's
``screened``), and the answer ends with a note saying so. ``escape_markdown`` is the other
half: text shown or exported as Markdown is escaped, so even an unscreened string renders as
the characters it is.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all
# leaves no way to open a link, an image, HTML, emphasis, a table, maths or a colour directive.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")

_ALT_LIMIT = 300  # an image's alt text (or reference) longer than this is not held for
_URL_LIMIT = 2000  # a URL longer than this is not held for
_IMAGE = re.compile(
    rf"!\[([^\]\n]{{0,{_ALT_LIMIT}}})\]"
    rf"(?:\([^)\n]{{0,{_URL_LIMIT}}}\)|\[[^\]\n]{{0,{_ALT_LIMIT}}}\])"
)
_TAG_NAME = re.compile(r"<([A-Za-z][\w:-]{0,40})")
# Attributes whose address a browser fetches by itself. (href too, but not on <a>: a link
# waits for a click.) A browser also takes "/" between a tag's name and its attributes.
_URL_ATTRIBUTE = re.compile(
    r"[\s/\"'](?:src|srcset|data|poster|background|action|formaction|style|xlink:href|(href))"
    r"\s*=",
    re.IGNORECASE,
)


def new_canary() -> str:
    """A random secret for one prompt: 12 hex digits, which no real answer contains."""
    return secrets.token_hex(6)


def escape_markdown(text: str) -> str:
    """``text`` as Markdown that renders as exactly these characters, line breaks included:
    no markup at all (the UI shows model output and document text only through this)."""
    escaped = _PUNCTUATION.sub(r"\\\1", text)
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


class OutputGuard:
    """Screens a stream of model text: images, URL-bearing HTML and the canary go.

    ``feed`` returns what can be shown now and holds back a tail that may still become an
    image, a tag or the canary; ``flush`` ends the stream. Splitting a text anywhere gives
    the same result as feeding it whole.
    """

    def __init__(self, canary: str | None = None) -> None:
        self.canary = canary.lower() if canary else None
        self.findings: Counter[str] = Counter()
        self._held = ""
        # Where something may start: an image, a tag, or the secret (in either case).
        first = re.escape(self.canary[0] + self.canary[0].upper()) if self.canary else ""
        self._trigger = re.compile(f"[!<{first}]")

    def feed(self, piece: str) -> str:
        """The part of the text so far that is safe to show."""
        self._held += piece
        out, self._held = self._screen(self._held, final=False)
        return out

    def flush(self) -> str:
        """The rest, at the end of the stream."""
        out, self._held = self._screen(self._held, final=True)
        return out

    def screen(self, text: str) -> str:
        """A whole text, screened (the guard's findings count it too)."""
        return self.feed(text) + self.flush()

    def settle(self, text: str) -> str:
        """``text`` (what was shown) screened again until nothing changes: a removal can join
        what was around it into a new image, tag or secret ("!<b src=u>[a](x)"). A pass that
        changes the text removes something or breaks a ``![``, which nothing rebuilds but a
        removal, so this ends. This is what is returned and saved."""
        while (again := self._inner(text)) != text:
            text = again
        return text

    def _screen(self, text: str, *, final: bool) -> tuple[str, str]:
        out: list[str] = []
        i = 0
        while match := self._trigger.search(text, i):
            start = match.start()
            out.append(text[i:start])
            replaced = self._replace(text, start, final=final)
            if replaced is None:  # may still become something: hold it
                return "".join(out), text[start:]
            kept, i = replaced
            out.append(kept)
        out.append(text[i:])
        return "".join(out), ""

    def _inner(self, text: str) -> str:
        """Text inside a construct (alt text, a kept tag), screened on its own."""
        inner = OutputGuard(self.canary)
        screened = inner.screen(text)
        self.findings.update(inner.findings)
        return screened

    def _replace(self, text: str, start: int, *, final: bool) -> tuple[str, int] | None:
        """What replaces the construct at ``start`` and where scanning resumes; None: wait."""
        if self.canary:
            head = text[start : start + len(self.canary)].lower()
            if head == self.canary:
                self.findings["canary"] += 1
                return "[…]", start + len(self.canary)
            if self.canary.startswith(head) and start + len(head) == len(text):
                if not final:
                    return None
                if 2 * len(head) >= len(self.canary):  # the stream ended half-way into it
                    self.findings["canary"] += 1
                    return "[…]", len(text)
        if text.startswith("!", start):
            return self._image(text, start, final=final)
        if text.startswith("<", start):
            return self._tag(text, start, final=final)
        return text[start], start + 1

    def _image(self, text: str, start: int, *, final: bool) -> tuple[str, int] | None:
        if match := _IMAGE.match(text, start):
            self.findings["image"] += 1
            return self._inner(match.group(1)), match.end()  # it may hold the same again
        if not final and _may_become_image(text[start:]):
            return None
        if text.startswith("![", start):  # not an image: break the opener all the same
            return "! [", start + 2
        return "!", start + 1

    def _tag(self, text: str, start: int, *, final: bool) -> tuple[str, int] | None:
        """A tag that would fetch an address goes, closed or not; another tag stays; a ``<``
        that starts no tag is text. (An unclosed ``<name `` holds the stream until its ``>``,
        a ``<`` or the end: the price of never letting a padded tag through.)"""
        name = _TAG_NAME.match(text, start)
        if name is None and start == len(text) - 1 and not final:
            return None  # a "<" that the next piece may make a tag
        after = text[name.end() : name.end() + 1] if name else ""
        tag = name.group(1) if name and (after == "" or after.isspace() or after in "/>") else ""
        end = _tag_end(text, name.end()) if name and tag else -2
        if end == -2:  # no tag name here, or a "<" inside: not a tag
            return "<", start + 1
        if end == -1 and not final:
            return None  # held until it closes (or the stream ends), however long
        head = text[start : len(text) if end < 0 else end]
        if _fetches(tag, head):
            self.findings["html"] += 1
            return "", start + len(head)
        if end < 0:
            return "<", start + 1
        # Kept, but not unread: an image or the secret inside it would show wherever the tag
        # is taken as text (a viewer that escapes HTML).
        return "<" + self._inner(head[1:]), end


def _tag_end(text: str, i: int) -> int:
    """Just past the ``>`` that closes the tag whose attributes start at ``i``; -1: not
    yet; -2: a ``<`` comes first (outside quotes)."""
    quote = ""
    for j in range(i, len(text)):
        char = text[j]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ">":
            return j + 1
        elif char == "<":
            return -2
    return -1


def _fetches(name: str, tag: str) -> bool:
    """Whether a browser fetches something to show the tag."""
    return any(not m.group(1) or name.lower() != "a" for m in _URL_ATTRIBUTE.finditer(tag))


def _may_become_image(rest: str) -> bool:
    """Whether ``rest`` is a prefix of an image (``![alt](url)`` or ``![alt][ref]``)."""
    if rest == "!":
        return True
    if not rest.startswith("!["):
        return False
    close = rest.find("]", 2)
    if close < 0:
        return "\n" not in rest and len(rest) - 2 <= _ALT_LIMIT
    tail = rest[close + 1 :]
    if not tail:
        return True
    limit = _URL_LIMIT if tail[0] == "(" else _ALT_LIMIT
    end = ")" if tail[0] == "(" else "]"
    return tail[0] in "([" and "\n" not in tail and end not in tail and len(tail) - 1 <= limit
