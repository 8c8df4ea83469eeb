"""The app's parts that need no Streamlit: safe text, highlighting, charts, background jobs,
and the settings file the Settings page writes."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import Assistant
from kb_assistant.cli import main
from kb_assistant.errors import ConfigError
from kb_assistant.settings import load_settings, save_settings
from kb_assistant.ui.jobs import JobBoard, start_answer
from kb_assistant.ui.render import chart_kind, highlighted, plain


def test_plain_escapes_every_markup_character() -> None:
    hostile = "![x](http://h/?q=1) <img src=x> **b** `c` $m$ :red[r] | a | # h\n- item"
    shown = plain(hostile)
    assert not re.search(r"(?<!\\)[!\[\]()<>*`$|#:-]", shown)
    assert re.sub(r"\\(.)", r"\1", shown.replace("  \n", "\n")) == hostile


def test_highlighting_marks_whole_words_and_chinese_terms() -> None:
    text = "Install packages with apt; aptitude is another tool. 安装软件包"
    out = highlighted(text, ["apt", "安装"])
    assert ":orange-background[apt]\\;" in out
    assert "aptitude" in out and ":orange-background[aptitude]" not in out
    assert ":orange-background[安装]软件包" in out


@pytest.mark.parametrize(
    ("columns", "rows", "kind"),
    [
        (["genre", "n"], [["Rock", 1297], ["Jazz", 130]], "bar"),
        (["year", "total"], [[2009, Decimal("449.46")], [2010, Decimal("481.45")]], "line"),
        (["day", "n"], [[date(2024, 1, 1), 3], [date(2024, 1, 2), 4]], "line"),
        (["name", "city"], [["a", "b"], ["c", "d"]], None),
        (["n"], [[1], [2]], None),
        (["genre", "n"], [["Rock", 1297]], None),
        (["genre", "n"], [["g", 1]] * 51, None),
        (["flag", "n"], [[None, 1], ["x", 2]], None),
    ],
)
def test_chart_only_for_small_numeric_series(
    columns: list[str], rows: list[list[object]], kind: str | None
) -> None:
    assert chart_kind(columns, rows) == kind


def test_a_background_ingest_reports_each_file(assistant: Assistant, tmp_path: Path) -> None:
    good = assistant.save_upload("a.md", b"# A\n\nalpha beta")
    bad = assistant.save_upload("b.pdf", b"%PDF-1.4 but damaged after its header")
    board = JobBoard()
    job = board.start(assistant, "default", {good: "a.md", bad: "b.pdf"})
    assert board.wait(30)
    assert job.state == "done" and job.fraction == 1.0
    assert {(r.name, r.outcome) for r in job.results} == {("a.md", "added"), ("b.pdf", "failed")}
    assert board.jobs("default") == [job] and board.active() == []


def test_a_background_ingest_that_fails_says_why(assistant: Assistant, tmp_path: Path) -> None:
    board = JobBoard()
    path = assistant.save_upload("a.md", b"alpha")
    job = board.start(assistant, "bad/name", {path: "a.md"})
    assert board.wait(30)
    assert job.state == "failed" and job.error and "name" in job.error


def test_an_answer_job_streams_and_saves_the_turn(assistant: Assistant, tmp_path: Path) -> None:
    (tmp_path / "n.md").write_text("ifupdown configures interfaces.", encoding="utf-8")
    assistant.ingest([tmp_path / "n.md"])
    session = assistant.new_conversation()
    job = start_answer(assistant, "default", session, "What configures interfaces?")
    seen = 0
    while not job.done:
        job.wait_for_change(seen, timeout=5)
        seen = len(job.text)
    assert job.error is None and "ifupdown" in job.text
    turns = assistant.conversations.turns(session)
    assert [t.question for t in turns] == ["What configures interfaces?"]


def test_save_settings_validates_merges_and_keeps_the_old_file(kb_home: Path) -> None:
    save_settings(kb_home, {"temperature": 0.5, "ui_language": "zh"})
    save_settings(kb_home, {"top_k": 10})
    s = load_settings(kb_home)
    assert (s.temperature, s.ui_language, s.top_k) == (0.5, "zh", 10)
    before = (kb_home / "config.toml").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="chunk_overlap"):
        save_settings(kb_home, {"chunk_tokens": 32, "chunk_overlap": 40})
    with pytest.raises(ConfigError, match="unknown setting"):
        save_settings(kb_home, {"nonsense": 1})
    assert (kb_home / "config.toml").read_text(encoding="utf-8") == before
    save_settings(kb_home, {}, remove=["temperature"])
    assert load_settings(kb_home).temperature == 0.2


def test_kb_config_set_and_unset(kb_home: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["config", "set", "answer_language", "zh", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"answer_language": "zh"}
    assert runner.invoke(main, ["config", "set", "max_tokens", "9"]).exit_code == 1
    assert load_settings(kb_home).max_tokens == 384
    runner.invoke(main, ["config", "set", "app_password", "pw"])
    shown = json.loads(runner.invoke(main, ["config", "--json"]).output)
    assert shown["app_password"] == "********" and shown["answer_language"] == "zh"
    assert (kb_home / "config.toml").stat().st_mode & 0o077 == 0
    assert runner.invoke(main, ["config", "unset", "answer_language"]).exit_code == 0
    assert load_settings(kb_home).answer_language == "auto"


def test_kb_app_refuses_the_network_without_a_password(kb_home: Path) -> None:
    out = CliRunner().invoke(main, ["app", "--address", "0.0.0.0"])
    assert out.exit_code == 2 and "password" in out.output


def test_the_answer_language_setting_overrides_the_question(kb_home: Path, tmp_path: Path) -> None:
    from kb_assistant.assistant import build_assistant
    from kb_assistant.models.embeddings import HashEmbedder

    (tmp_path / "n.md").write_text("ifupdown configures interfaces.", encoding="utf-8")
    a = build_assistant(load_settings(kb_home, answer_language="zh"), embeddings=HashEmbedder())
    a.ingest([tmp_path / "n.md"])
    answer = a.ask("What configures interfaces?")
    assert answer.language == "zh"
    system = str(a.chat_model.calls[-1][0].content)  # type: ignore[attr-defined]
    assert re.search(r"[\u4e00-\u9fff]", system), "the Chinese system prompt was used"
