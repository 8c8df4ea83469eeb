"""Is each sentence of an answer supported by the passages behind it?

After an answer is generated, every sentence is checked against the passages it cites (its
``[n]`` marks), or, uncited, against the prompt's passage it is closest to:

* **key terms** — numbers, identifiers (anything with a digit, ``/``, ``.``, ``_``, ``-``,
  ``:``, ``@`` or a capital inside: ``/etc/apt/sources.list``, ``apt-get``, ``GRUB2``,
  ``5.10``), Latin words inside a Chinese sentence — must each appear in one of those
  passages (compared without case, hyphens or spaces: ``CD-ROM`` is ``cdrom``); list
  numbers ("2.") and placeholders a model invents for an example (``example.rpm``, ``foo``)
  are not terms. Plain capitalised words are not terms either: titles and headings
  ("**List Diversions**") flagged too many correct answers;
* **meaning** — the sentence's embedding must be close enough to one of them (the embedding
  model's cosine scale; ``min_cosine``).

A sentence failing either is *unsupported*: marked, never dropped (the CLI and the app show it
as "not found in the sources"). Measured on the dev answer sets: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kb_assistant.chains.citations import cited_numbers, without_citations
from kb_assistant.loaders.splitter import split_sentences

Embed = Callable[[Sequence[str]], np.ndarray]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_TOKEN = re.compile(r"[/~]?[A-Za-z0-9][\w./:+~@-]*[\w/+]|[A-Za-z0-9]", re.ASCII)  # not 系统
# A hyphenated phrase with a function word in it is prose, not a name: up-to-date,
# step-by-step, end-of-life (apt-get, file-rc, kfreebsd-amd64 stay identifiers).
_PROSE_PART = frozenset("a an and at by for in of on or the to".split())
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "approx"})
_ENUMERATOR = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)]|[a-z][.)])\s+|^\s*\d{1,2}[.)]\s*$")
_MARKUP = re.compile(r"[*_`#>]+")
_PLACEHOLDER = re.compile(r"example|^(?:foo|bar|baz|my\w*|your\w*|some\w*|x+|name)(?:[.-]|$)",
                          re.IGNORECASE)  # fmt: skip
_NOT_ALNUM = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class SentenceCheck:
    """One answer sentence and whether the passages support it."""

    text: str
    supported: bool
    passages: list[int] = field(default_factory=list)  # the passage numbers it was tested on
    missing: list[str] = field(default_factory=list)  # key terms found in none of them
    similarity: float | None = None  # best cosine to one of them

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "text": self.text, "supported": self.supported, "passages": self.passages,
            "missing": self.missing,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
        }  # fmt: skip


def key_terms(sentence: str) -> list[str]:
    """The terms a supporting passage must contain: numbers and identifiers (and, in a
    Chinese sentence, every Latin word)."""
    text = _ENUMERATOR.sub(" ", _MARKUP.sub(" ", without_citations(sentence)))
    chinese = bool(_CJK.search(text))
    terms: list[str] = []
    for match in _NUMBER.finditer(text):
        terms.append(match.group())
    for match in _TOKEN.finditer(text):
        token = match.group().rstrip(".:")
        if not token or token.isdigit() or _NUMBER.fullmatch(token):
            continue
        if _PLACEHOLDER.search(token):
            continue
        if token.lower() in _ABBREVIATIONS:
            continue
        if "-" in token and _PROSE_PART.intersection(token.lower().split("-")):
            continue
        identifier = any(c in token for c in "/._:-+~@") or any(c.isdigit() for c in token) or (
            any(c.isupper() for c in token[1:])
        )  # fmt: skip
        if identifier or chinese:
            terms.append(token)
    return list(dict.fromkeys(terms))


def _contains(passage: str, term: str) -> bool:
    """Whether ``term`` occurs in ``passage``: a number as a number (thousands separators
    ignored), anything else ignoring case, hyphens, slashes and spaces."""
    if _NUMBER.fullmatch(term):
        digits = term.replace(",", "")
        found = (m.group().replace(",", "") for m in _NUMBER.finditer(passage))
        return any(n == digits for n in found)
    squeezed = _NOT_ALNUM.sub("", term.lower())
    return bool(squeezed) and squeezed in _NOT_ALNUM.sub("", passage.lower())


def check_sentences(
    answer: str,
    passages: dict[int, str],
    embed: Embed | None,
    *,
    min_cosine: float,
) -> list[SentenceCheck]:
    """Check every sentence of ``answer`` against the passages (number -> text) behind it.

    Sentences that carry no claim (no key term and fewer than three words) are supported.
    """
    sentences = [s.strip() for s in split_sentences(answer) if s.strip()]
    if not sentences or not passages:
        return [SentenceCheck(s, True) for s in sentences]
    numbers = sorted(passages)
    similarity: np.ndarray | None = None
    if embed is not None:
        plain = [without_citations(s) for s in sentences]
        vectors = embed([*plain, *(passages[n] for n in numbers)])
        similarity = vectors[: len(sentences)] @ vectors[len(sentences) :].T
    checks = []
    for row, sentence in enumerate(sentences):
        cited = [n for n in cited_numbers(sentence) if n in passages]
        columns = [numbers.index(n) for n in cited] if cited else list(range(len(numbers)))
        best: float | None = None
        if similarity is not None:
            best = float(max(similarity[row, c] for c in columns))
        tested = [numbers[c] for c in columns]  # uncited: any passage of the prompt
        terms = key_terms(sentence)
        missing = [t for t in terms if not any(_contains(passages[n], t) for n in tested)]
        words = len(without_citations(sentence).split()) + len(_CJK.findall(sentence)) // 2
        if not terms and words < 3:
            checks.append(SentenceCheck(sentence, True, tested, [], best))
            continue
        close = best is None or best >= min_cosine
        checks.append(SentenceCheck(sentence, not missing and close, tested, missing, best))
    return checks


def check_numbers(answer: str, values: Sequence[Any], context: str = "") -> list[SentenceCheck]:
    """Check the numbers of every sentence of ``answer`` against query results.

    A number is supported when it is one of ``values`` (a query's cells and its row count)
    as written, or rounded to the digits it is written with (5.65 for 5.651941…), or when it
    occurs in a text cell or in ``context`` (the question: "the top 5"). A sentence with an
    unsupported number is unsupported, and ``missing`` names the numbers.
    """
    numbers: list[float] = []
    texts = [context]
    for value in values:
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            numbers.append(float(value))
        else:
            texts.append(str(value))
            with contextlib.suppress(ValueError):
                numbers.append(float(str(value).replace(",", "")))
    joined = "\n".join(texts)
    checks = []
    for sentence in (s.strip() for s in split_sentences(answer)):
        if not sentence:
            continue
        written = [t for t in key_terms(sentence) if _NUMBER.fullmatch(t)]
        missing = [
            n for n in written if not _contains(joined, n) and not _rounds_to(n, numbers)
        ]  # fmt: skip
        checks.append(SentenceCheck(sentence, not missing, [], missing))
    return checks


def _rounds_to(written: str, numbers: Sequence[float]) -> bool:
    """Whether ``written`` ("1,297", "5.65") is one of ``numbers`` at its precision."""
    plain = written.replace(",", "")
    try:
        target = float(plain)
    except ValueError:
        return False
    digits = len(plain.partition(".")[2])
    return any(abs(round(n, digits) - target) < 10 ** -(digits + 3) for n in numbers)
