"""A passage's source card: the chat's citations and the Graph page's passages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from kb_assistant.ui.i18n import Text
from kb_assistant.ui.page_view import show_page
from kb_assistant.ui.render import highlighted, plain, where


def source_card(
    t: Text,
    c: dict[str, Any],
    terms: list[str],
    *,
    read_only: bool = False,
    page_key: str | None = None,
    expanded: bool = False,
) -> None:
    """A passage's card (a citation's JSON form): where it is from, its text with ``terms``
    marked, and, given ``page_key``, its page with the passage highlighted."""
    name = c.get("name") or Path(c["source"]).name
    label = f"[{c['n']}] " + where(name, c.get("page"), c.get("sheet"), t("where.page"),
                                   t("where.sheet"))  # fmt: skip
    if c.get("inferred"):
        label += " · " + t("chat.inferred")
    if read_only:
        label += " · " + t("chat.read_label")
    with st.expander(plain(label), expanded=expanded, icon=":material/description:"):
        if c.get("heading"):
            st.markdown(f"**{plain(c['heading'])}**")
        st.markdown(highlighted(c.get("text", ""), terms))
        if c.get("ocr") is not None:
            st.caption(t("page.ocr", confidence=f"{c['ocr']:.2f}"))
        if page_key is not None:  # not while an answer streams: rendering would slow it
            show_page(t, c, page_key)
