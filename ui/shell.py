"""The frame around every page: password gate, language, knowledge-base picker, navigation."""

from __future__ import annotations

import hmac
from pathlib import Path

import streamlit as st

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import KBError
from kb_assistant.settings import Settings, load_settings
from kb_assistant.ui.i18n import LANGUAGES, Text
from kb_assistant.ui.state import Build, PageContext, job_board, set_context, shared_assistant

PAGES = Path(__file__).parent / "pages"


def run(build: Build = build_assistant) -> None:
    """Draw the app (``app.py`` calls this; tests pass their own ``build``)."""
    # Page icons become the favicon: emoji are drawn locally (a data: URL), whereas a
    # ":material/...:" icon would make the browser fetch it from fonts.gstatic.com.
    st.set_page_config(page_title="kb-assistant", page_icon="📚", layout="wide")
    try:
        settings = load_settings()
    except KBError as exc:  # a broken config file must not hide the app behind a traceback
        st.error(str(exc))
        st.stop()
    t = Text(st.session_state.get("ui_language", settings.ui_language))
    if not _unlocked(settings, t):
        st.stop()
    t = _language_picker(settings)
    assistant = shared_assistant(settings, build)
    kb = _kb_picker(assistant, t)
    set_context(PageContext(assistant, settings, kb, t, job_board(str(settings.home))))
    pages = [
        st.Page(PAGES / "documents.py", title=t("nav.documents"), icon="📁",
                url_path="documents", default=True),
        st.Page(PAGES / "chat.py", title=t("nav.chat"), icon="💬", url_path="chat"),
        st.Page(PAGES / "tables.py", title=t("nav.tables"), icon="📊",
                url_path="tables"),
        st.Page(PAGES / "graph.py", title=t("nav.graph"), icon="🕸️", url_path="graph"),
        st.Page(PAGES / "settings_page.py", title=t("nav.settings"), icon="⚙️",
                url_path="settings"),
    ]  # fmt: skip
    st.navigation(pages).run()


def _unlocked(settings: Settings, t: Text) -> bool:
    """With ``app_password`` set, nothing is shown until it is typed."""
    if settings.app_password is None or st.session_state.get("unlocked"):
        return True
    st.title("kb-assistant")
    with st.form("unlock"):
        typed = st.text_input(t("gate.password"), type="password")
        if st.form_submit_button(t("gate.unlock")):
            expected = settings.app_password.get_secret_value()
            if hmac.compare_digest(typed.encode(), expected.encode()):
                st.session_state["unlocked"] = True
                st.rerun()
            st.error(t("gate.wrong"))
    return False


def _language_picker(settings: Settings) -> Text:
    codes = list(LANGUAGES)
    current = st.session_state.get("ui_language", settings.ui_language)
    chosen = st.sidebar.selectbox(
        "Language / 语言", codes, index=codes.index(current), format_func=LANGUAGES.__getitem__,
        key="language-picker",
    )  # fmt: skip
    st.session_state["ui_language"] = chosen
    return Text(chosen)


def _kb_picker(assistant: Assistant, t: Text) -> str:
    names = assistant.library.names()
    default = assistant.settings.kb
    options = sorted({*names, default})
    current = st.session_state.get("kb", default)
    chosen = st.sidebar.selectbox(
        t("sidebar.kb"), options, index=options.index(current) if current in options else 0
    )
    st.session_state["kb"] = chosen
    with st.sidebar.form("create-kb", clear_on_submit=True):
        new_name = st.text_input(t("sidebar.new_kb"))
        if st.form_submit_button(t("sidebar.create")) and new_name.strip():
            try:
                assistant.create_kb(new_name.strip())
                st.session_state["kb"] = new_name.strip()
                st.rerun()
            except KBError as exc:
                st.error(str(exc))
    return str(chosen)
