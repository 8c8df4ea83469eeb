"""The kb command through click's runner: JSON keys, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kb_assistant.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PARTIAL, main


def kb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_ingest_docs_search_remove_round_trip(tmp_path: Path) -> None:
    (tmp_path / "net.md").write_text(
        "# Network\n\nifupdown reads /etc/network/interfaces.", encoding="utf-8"
    )
    (tmp_path / "apt.txt").write_text(
        "apt-get installs packages from the archive.", encoding="utf-8"
    )

    ingest = json.loads(kb("ingest", str(tmp_path), "--json").output)
    assert set(ingest) >= {"added", "updated", "unchanged", "failed", "chunks_added", "seconds"}
    assert len(ingest["added"]) == 2 and ingest["chunks_added"] == 2

    docs = json.loads(kb("docs", "--json").output)
    assert [
        set(d) >= {"doc_id", "source", "pages", "chunks", "sha256", "added_at"} for d in docs
    ] == [True, True]

    hits = json.loads(kb("search", "network interfaces", "-k", "1", "--json").output)
    assert [set(h) >= {"rank", "text", "source", "page", "score"} for h in hits] == [True]
    assert hits[0]["source"].endswith("net.md") and hits[0]["rank"] == 1

    removed = json.loads(kb("remove", "net.md", "--json").output)
    assert [r["source"].endswith("net.md") for r in removed] == [True]
    assert [d["source"].endswith("apt.txt") for d in json.loads(kb("docs", "--json").output)] == [
        True
    ]


def test_partial_failure_exit_code_and_summary(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 nope")
    result = kb("ingest", str(tmp_path))
    assert result.exit_code == EXIT_PARTIAL
    assert "1 added, 0 updated, 0 unchanged, 1 failed" in result.output
    assert "bad.pdf: damaged or not a PDF" in result.output


def test_errors_are_one_line_and_json_when_asked() -> None:
    result = CliRunner().invoke(main, ["search", "anything", "--kb", "nope", "--json"])
    assert result.exit_code == EXIT_ERROR
    data = json.loads(result.stdout)
    assert data["type"] == "KnowledgeBaseNotFound" and "'nope'" in data["error"]
    assert "error: no knowledge base named 'nope'" in result.stderr


def test_knowledge_base_commands(kb_home: Path) -> None:
    assert "created knowledge base 'notes'" in kb("kb", "create", "notes").output
    assert kb("kb", "create", "notes").exit_code == EXIT_ERROR
    names = [k["name"] for k in json.loads(kb("kbs", "--json").output)]
    assert names == ["notes"]
    assert json.loads(kb("kb", "delete", "notes", "--yes", "--json").output) == {"deleted": "notes"}
    assert json.loads(kb("kbs", "--json").output) == []
    assert not (kb_home / "kbs" / "notes").exists()


def test_home_option_and_config(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    kb("--home", str(other), "kb", "create", "x")
    assert (other / "kbs" / "x" / "manifest.json").is_file()
    config = json.loads(kb("--home", str(other), "config", "--json").output)
    assert config["home"] == str(other) and config["embedding_backend"] == "fake"


def test_invalid_setting_is_reported_with_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_CHUNK_TOKENS", "5")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == EXIT_ERROR
    assert "chunk_tokens" in result.stderr and "KB_*" in result.stderr


def test_interrupted_ingest_says_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb_assistant import assistant

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(assistant.Assistant, "ingest", interrupted)
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    result = CliRunner().invoke(main, ["ingest", str(tmp_path)])
    assert result.exit_code == EXIT_INTERRUPTED
    assert "documents finished before the interruption are kept" in result.stderr
