"""The knowledge base on disk: persistence, snapshots, identity, locking, damage."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import (
    CorruptKnowledgeBase,
    EmbeddingMismatch,
    KnowledgeBaseLocked,
    KnowledgeBaseNotFound,
)
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings
from kb_assistant.vectorstore import Library
from kb_assistant.vectorstore.vector_index import INDEX_NAME
from tests.stores import vector_store  # noqa: F401 (the fixture)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def top_source(assistant: Assistant, query: str) -> str:
    return Path(assistant.search(query, k=1)[0].chunk.source).name


def counts(assistant: Assistant) -> tuple[int, int]:
    kb = assistant.knowledge_base()
    return kb.catalog.chunk_count(), kb.index().count


@pytest.mark.usefixtures("vector_store")
def test_knowledge_base_survives_a_new_process(settings: Settings, tmp_path: Path) -> None:
    first = build_assistant(settings, embeddings=HashEmbedder())
    first.ingest(
        [
            write(tmp_path, "apt.txt", "apt installs Debian packages"),
            write(tmp_path, "net.txt", "ifupdown configures network interfaces"),
        ]
    )
    first.close()
    second = build_assistant(settings, embeddings=HashEmbedder())
    assert top_source(second, "network interfaces") == "net.txt"
    assert counts(second) == (2, 2)


def test_stale_snapshot_is_brought_up_to_date_from_the_catalog(
    assistant: Assistant, settings: Settings, tmp_path: Path
) -> None:
    assistant.ingest([write(tmp_path, "a.txt", "alpha apples")])
    folder = assistant.knowledge_base().folder
    shutil.copy(folder / INDEX_NAME, tmp_path / "old.faiss")
    assistant.ingest([write(tmp_path, "b.txt", "beta bananas")])
    shutil.copy(tmp_path / "old.faiss", folder / INDEX_NAME)  # as if killed before the save
    reopened = build_assistant(settings, embeddings=HashEmbedder())
    assert top_source(reopened, "bananas") == "b.txt"
    assert counts(reopened) == (2, 2)


def test_damaged_snapshot_is_rebuilt_not_served(
    assistant: Assistant, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assistant.ingest(
        [write(tmp_path, "a.txt", "alpha apples"), write(tmp_path, "b.txt", "beta bananas")]
    )
    path = assistant.knowledge_base().folder / INDEX_NAME
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    reopened = build_assistant(settings, embeddings=HashEmbedder())
    with caplog.at_level(logging.WARNING):
        assert top_source(reopened, "apples") == "a.txt"
    assert "checksum mismatch" in caplog.text
    assert counts(reopened) == (2, 2)


@pytest.mark.usefixtures("vector_store")
def test_another_embedding_model_is_refused_clearly(
    assistant: Assistant, settings: Settings, tmp_path: Path
) -> None:
    assistant.ingest([write(tmp_path, "a.txt", "alpha")])
    other = build_assistant(settings, embeddings=HashEmbedder(dimension=128))
    with pytest.raises(
        EmbeddingMismatch, match=r"built with embedding model 'fake-hash-256' \(256"
    ):
        other.search("alpha")
    with pytest.raises(EmbeddingMismatch):
        other.ingest([write(tmp_path, "b.txt", "beta")])
    assert [d.name for d in assistant.documents()] == ["a.txt"]


@pytest.mark.usefixtures("vector_store")
def test_second_writer_waits_then_gives_up_with_a_clear_error(
    assistant: Assistant, tmp_path: Path
) -> None:
    assistant.ingest([write(tmp_path, "a.txt", "alpha")])
    kb = assistant.knowledge_base()
    told: list[bool] = []
    with (
        kb.locked(),
        pytest.raises(KnowledgeBaseLocked, match="being written by another"),
        kb.writer(timeout=0.3, on_wait=lambda: told.append(True)),
    ):
        pass
    assert told == [True]


def test_damaged_catalog_is_reported(
    assistant: Assistant, settings: Settings, tmp_path: Path
) -> None:
    assistant.ingest([write(tmp_path, "a.txt", "alpha")])
    assistant.close()
    catalog = settings.home / "kbs" / "default" / "catalog.sqlite"
    catalog.write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(catalog) + suffix).unlink(missing_ok=True)
    with pytest.raises(CorruptKnowledgeBase, match="damaged or not a catalog"):
        build_assistant(settings, embeddings=HashEmbedder()).documents()


def test_manifest_from_a_newer_version_is_refused(
    assistant: Assistant, settings: Settings, tmp_path: Path
) -> None:
    assistant.ingest([write(tmp_path, "a.txt", "alpha")])
    manifest = settings.home / "kbs" / "default" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(CorruptKnowledgeBase, match="newer kb-assistant"):
        build_assistant(settings, embeddings=HashEmbedder()).documents()


@pytest.mark.usefixtures("vector_store")
def test_create_list_delete(assistant: Assistant) -> None:
    assistant.create_kb("研究")
    assistant.create_kb("work-2")
    assert [s.name for s in assistant.list_kbs()] == ["work-2", "研究"]
    assistant.delete_kb("研究")
    assert Library(assistant.settings.home).names() == ["work-2"]
    with pytest.raises(KnowledgeBaseNotFound, match="existing: work-2"):
        assistant.documents("研究")
