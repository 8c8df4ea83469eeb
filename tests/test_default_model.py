"""The default install end to end: multilingual-e5-small and the default catalog chat model
(installed by scripts/setup) answer a Chinese and an English question correctly, in the
question's language, citing the passage, and flag nothing that the passage says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kb_assistant.assistant import build_assistant
from kb_assistant.models.chat_models import RECOMMENDED, installed_path
from kb_assistant.settings import Settings, load_settings
from tests.files import CHINOOK

pytestmark = pytest.mark.slow

POLICY_EN = (
    "# Travel policy\n\nEmployees may claim up to 45 euros per day for meals on business trips. "
    "Hotel bookings above 150 euros per night need the approval of a department head. "
    "Receipts must be submitted within 30 days of the trip.\n"
)
POLICY_ZH = (
    "# 休假制度\n\n正式员工每年享有 15 天带薪年假。未休完的年假最多可以顺延 5 天到下一年，"
    "顺延的假期必须在次年 3 月 31 日之前休完。病假需要提供医院证明。\n"
)


def test_the_default_models_answer_in_both_languages(
    kb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KB_CHAT_MODEL")  # conftest picks the tiny model for the other tests
    monkeypatch.setenv("KB_EMBEDDING_BACKEND", "onnx")
    monkeypatch.setenv("KB_CHAT_BACKEND", "llama-cpp")
    settings = load_settings(kb_home, temperature=0.0, seed=1, max_tokens=160)
    default = Settings.model_fields["chat_model"].default
    assert settings.chat_model == default == RECOMMENDED
    assert installed_path(RECOMMENDED, settings.model_cache_dir) is not None, (
        f"the default chat model is not installed: run scripts/setup (kb models install {default})"
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "travel.md").write_text(POLICY_EN, encoding="utf-8")
    (docs / "leave.md").write_text(POLICY_ZH, encoding="utf-8")
    assistant = build_assistant(settings)
    try:
        assistant.ingest([docs])
        english = assistant.ask("How much can I claim for meals per day on a business trip?")
        assert not english.refused and "45" in english.answer, english.answer
        assert english.language == "en" and not re.search(r"[\u4e00-\u9fff]", english.answer)
        assert [c.name for c in english.citations][:1] == ["travel.md"]
        chinese = assistant.ask("没休完的年假最多可以顺延几天？")
        assert not chinese.refused and "5" in chinese.answer, chinese.answer
        assert chinese.language == "zh" and re.search(r"[\u4e00-\u9fff]", chinese.answer)
        # Cited, or (a short answer the model did not mark) shown as "read, not cited".
        assert [c.name for c in chinese.citations or chinese.passages][:1] == ["leave.md"]
        for answer in (english, chinese):
            assert all(s.supported for s in answer.sentences), answer.to_json()["sentences"]
        # Off-topic: abstained, without calling the model.
        assert assistant.ask("谁画了《蒙娜丽莎》？").refused
    finally:
        assistant.close()


def test_the_default_model_calls_tools_and_writes_the_sql(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Native tool calling on the real model: its first reply is forced to be a tool call (a
    grammar), it writes its own SQL from the schema in its prompt, and the answer is written
    from the rows, in the question's language."""
    monkeypatch.delenv("KB_CHAT_MODEL")
    monkeypatch.setenv("KB_CHAT_BACKEND", "llama-cpp")
    assistant = build_assistant(load_settings(kb_home, temperature=0.0, seed=1, max_tokens=160))
    before = CHINOOK.read_bytes()
    try:
        assistant.connect_database(f"sqlite:///{CHINOOK}", name="music")
        result = assistant.agent("How many customers are from Brazil?")
        assert result.mode == "native tool calls"
        assert any(s.tool == "run_sql" and not s.error for s in result.steps), result.steps
        assert result.rows == [[5]] and "5" in result.answer, result.to_json()
        # Chinese over the English schema: 专辑 is the Album table; the answer is a Chinese
        # sentence whose number is the query's.
        chinese = assistant.agent("数据库里有多少张专辑？")
        assert chinese.rows == [[347]], chinese.to_json()
        assert "347" in chinese.answer and re.search(r"[\u4e00-\u9fff]", chinese.answer)
        assert not chinese.unsupported, chinese.to_json()["sentences"]
        # A destructive request: whatever the model sends, nothing is written.
        drop = assistant.agent("Delete all customers from Brazil.")
        writes = [s for s in drop.steps if s.tool == "run_sql" and "SELECT" not in
                  str(s.input.get("sql", "")).upper()]  # fmt: skip
        assert all(s.error for s in writes), drop.to_json()
    finally:
        assistant.close()
    assert CHINOOK.read_bytes() == before  # read-only, whatever the model wrote
