"""A source card's page: the cited passage highlighted where it stands, and paging through.

Pages are rendered from the ingested file (``loaders.render``) and cached by Streamlit per
file, modification time, page and width; the highlight is drawn on a copy, so moving through
pages and back costs one rendering each.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import streamlit as st

from kb_assistant.errors import KBError
from kb_assistant.loaders.render import can_render, highlight, page_count, render_page
from kb_assistant.ui.i18n import Text

WIDTH = 900


@st.cache_data(max_entries=64, show_spinner=False)
def _png(source: str, modified: float, page: int, width: int) -> bytes:
    del modified  # part of the cache key only: an edited file is rendered again
    picture = render_page(source, page, width=width)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


@st.cache_data(max_entries=256, show_spinner=False)
def _pages(source: str, modified: float) -> int:
    del modified
    return page_count(source)


def show_page(t: Text, citation: dict[str, Any], key: str) -> None:
    """The citation's page with its passage highlighted, and buttons to page through."""
    source, cited = citation.get("source", ""), citation.get("page")
    if not cited or not can_render(source):
        return
    try:
        modified = os.stat(source).st_mtime
        total = _pages(source, modified)
    except (OSError, KBError):
        st.caption(t("page.gone", source=source))
        return
    state = f"page-view-{key}"
    page = min(max(1, int(st.session_state.get(state, cited))), total)
    back, label, ahead = st.columns([1, 3, 1])
    if back.button("◀", key=f"{state}-back", disabled=page <= 1, help=t("page.previous")):
        page -= 1
    if ahead.button("▶", key=f"{state}-next", disabled=page >= total, help=t("page.next")):
        page += 1
    st.session_state[state] = page
    label.caption(t("page.of", page=page, total=total))
    try:
        png = _png(source, modified, page, WIDTH)
    except KBError as exc:
        st.caption(str(exc))
        return
    boxes: Sequence[Sequence[float]] = citation.get("boxes") or []
    if page == cited and boxes:
        png = _marked(png, boxes)
    st.image(png, width="stretch")
    if page == cited and not boxes:
        st.caption(t("page.no_boxes"))


def _marked(png: bytes, boxes: Sequence[Sequence[float]]) -> bytes:
    from PIL import Image

    picture = highlight(Image.open(io.BytesIO(png)), boxes)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
