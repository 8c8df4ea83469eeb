"""Saved conversations and the chat/ask commands (scripted model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.chains import history_from
from kb_assistant.cli import main
from kb_assistant.errors import SessionNotFound
from kb_assistant.ui.render import conversation_markdown
from kb_assistant.vectorstore.conversations import ConversationStore


def test_store_round_trip(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "chats.sqlite")
    sid = store.create("default")
    cited = [{"n": 1, "source": "/d/apt.md", "page": None}]
    store.add(sid, "What is apt?", "A tool [1].", refused=False, citations=cited, trace={"x": 1})
    store.add(sid, "Capital of France?", "not covered", refused=True, citations=[], trace={})
    info = store.get(sid[:6])
    assert (info.title, info.turns, info.kb) == ("What is apt?", 2, "default")
    history = history_from(store.turns(sid))
    assert [t.question for t in history] == ["What is apt?"]  # refusals carry nothing
    store.rename(sid, "Package tools")
    markdown = conversation_markdown(store.get(sid), store.turns(sid))
    assert markdown.startswith("# Package tools") and "- \\[1\\] apt\\.md" in markdown
    store.delete(sid)
    with pytest.raises(SessionNotFound, match="kb chat --list"):
        store.get(sid)


def test_chat_command_saves_and_resumes(kb_home: Path, tmp_path: Path) -> None:
    (tmp_path / "apt.md").write_text(
        "# Installing\n\nUse apt install NAME to install a package.", "utf-8"
    )
    runner = CliRunner()
    runner.invoke(main, ["ingest", str(tmp_path)], catch_exceptions=False)
    first = runner.invoke(
        main, ["chat"], input="How do I install a package?\n/exit\n", catch_exceptions=False
    )
    assert "Use apt install NAME to install a package. [1]" in first.stdout
    sessions = json.loads(runner.invoke(main, ["chat", "--list", "--json"]).stdout)
    assert [(s["turns"], s["title"]) for s in sessions] == [(1, "How do I install a package?")]
    resumed = runner.invoke(main, ["chat", "--session", sessions[0]["session_id"]], input="/exit\n")
    assert "you> How do I install a package?" in resumed.stdout


def test_ask_json_and_refusal(kb_home: Path, tmp_path: Path) -> None:
    (tmp_path / "apt.md").write_text(
        "# Installing\n\nUse apt install NAME to install a package.", "utf-8"
    )
    runner = CliRunner()
    runner.invoke(main, ["ingest", str(tmp_path)], catch_exceptions=False)
    data = json.loads(runner.invoke(main, ["ask", "How do I install a package?", "--json"]).stdout)
    assert set(data) >= {"answer", "refused", "citations", "trace"}
    assert data["citations"][0]["n"] == 1 and data["citations"][0]["source"].endswith("apt.md")
    refused = json.loads(runner.invoke(main, ["ask", "谁赢得了世界杯？", "--json"]).stdout)
    assert refused["refused"] and refused["language"] == "zh" and refused["citations"] == []
    human = runner.invoke(main, ["ask", "How do I install a package?"])
    assert "Sources:" in human.stdout and "[1] apt.md" in human.stdout


def test_ask_on_a_missing_knowledge_base_fails_before_loading_a_model(kb_home: Path) -> None:
    result = CliRunner().invoke(main, ["ask", "anything", "--kb", "nope"])
    assert result.exit_code == 1 and "no knowledge base named 'nope'" in result.stderr
