"""Damaged knowledge bases: detected at open, reported clearly, never served mismatched, and
``kb check [--repair] [--json]`` (hardening items 2 and 6a)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.cli import main
from kb_assistant.errors import CorruptKnowledgeBase
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings
from kb_assistant.vectorstore import vector_index
from kb_assistant.vectorstore.vector_index import INDEX_NAME, VectorIndex
from tests.stores import vector_store  # noqa: F401 (the fixture)


def kb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def checked(*args: str) -> tuple[int, dict[str, Any]]:
    result = kb("check", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def folder(assistant: Assistant, tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["apt packages", "network interfaces", "kernel modules"]):
        (docs / f"d{i}.txt").write_text(f"{topic} {i}\n\nmore about {topic}.", encoding="utf-8")
    assistant.ingest([docs])
    path = assistant.knowledge_base().folder
    assistant.close()
    return path


@pytest.mark.usefixtures("vector_store")
def test_a_sound_knowledge_base_checks_ok(folder: Path) -> None:
    code, report = checked()
    assert code == 0
    assert report == {
        "kb": "default", "ok": True, "documents": 3, "chunks": 3, "vectors": 3,
        "problems": [], "repaired": [], "notes": [], "changed_sources": [],
    }  # fmt: skip


def test_flipped_byte_in_the_vector_file_is_a_cache_to_rebuild(folder: Path) -> None:
    path = folder / INDEX_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, report = checked()  # the snapshot is a cache of the catalog: nothing is wrong
    assert code == 0 and report["ok"] and report["problems"] == [] and report["vectors"] == 3
    assert report["repaired"] == [
        f"rebuilt {INDEX_NAME} from the catalog (it was damaged (checksum mismatch); 3 vectors)"
    ]
    assert VectorIndex.load(path, 256)[0].count == 3
    code, report = checked()
    assert code == 0 and report["repaired"] == [] and report["notes"] == []


def test_truncated_catalog_is_refused_at_open_with_what_to_do(
    folder: Path, settings: Settings
) -> None:
    catalog = folder / "catalog.sqlite"
    catalog.write_bytes(catalog.read_bytes()[: catalog.stat().st_size // 2])
    with pytest.raises(CorruptKnowledgeBase, match=r"catalog\.sqlite is damaged") as caught:
        build_assistant(settings, embeddings=HashEmbedder()).search("apt")
    assert "delete the knowledge base and ingest again" in str(caught.value)
    result = kb("search", "apt")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "catalog.sqlite is damaged" in result.stderr
    code, report = checked("--repair")  # nothing can rebuild the truth: it stays a problem
    assert code == 1 and "cannot be rebuilt" in report["problems"][0]


def test_damage_found_only_when_a_page_is_read_is_still_a_clear_error(
    folder: Path, settings: Settings
) -> None:
    # Overwrite the last page (chunk rows) but keep the header: opening works, reading fails.
    catalog = folder / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(catalog.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[-page:] = b"\xff" * page
    catalog.write_bytes(bytes(data))
    assistant = build_assistant(settings, embeddings=HashEmbedder())
    with pytest.raises(CorruptKnowledgeBase, match=r"catalog\.sqlite is damaged"):
        assistant.documents()
        assistant.search("apt")
    code, report = checked()
    assert code == 1 and "catalog.sqlite is damaged" in report["problems"][0]


@pytest.mark.parametrize(
    "edit", [{"embedding_model": "bge-small-zh", "dimension": 512}, {"dimension": 128}]
)
def test_manifest_naming_another_model_is_refused_then_restored(
    folder: Path, settings: Settings, edit: dict[str, Any]
) -> None:
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **edit}))
    # The configured embedder matches the edited manifest: only the catalog can tell.
    dimension = int(edit["dimension"])
    model = HashEmbedder(dimension=dimension)
    model.model_id = str(edit.get("embedding_model", model.model_id))
    with pytest.raises(CorruptKnowledgeBase, match="the manifest was edited") as caught:
        build_assistant(settings, embeddings=model).search("apt")
    assert f"({dimension} dimensions)" in str(caught.value)
    assert "fake-hash-256' (256 dimensions)" in str(caught.value)
    assert "kb check --kb default --repair" in str(caught.value)
    code, report = checked("--repair")
    assert code == 0 and report["problems"] == []
    assert report["repaired"][0] == "restored manifest.json from the catalog's copy"
    hits = build_assistant(settings, embeddings=HashEmbedder()).search("network interfaces", k=1)
    assert Path(hits[0].chunk.source).name == "d1.txt"


def test_old_catalog_without_a_copy_is_checked_by_its_vectors(
    folder: Path, settings: Settings
) -> None:
    with sqlite3.connect(folder / "catalog.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'identity'")
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "dimension": 384}))
    with pytest.raises(CorruptKnowledgeBase, match="made by a model of 256 dimensions"):
        build_assistant(settings, embeddings=HashEmbedder(dimension=384)).documents()


@pytest.mark.usefixtures("vector_store")
def test_check_finds_and_repairs_what_the_catalog_can_rebuild(folder: Path) -> None:
    with sqlite3.connect(folder / "catalog.sqlite") as db:
        first = db.execute("SELECT min(id) FROM chunks").fetchone()[0]
        db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (first,))  # keyword gap
        db.execute("UPDATE documents SET chunks = 7 WHERE id = 2")  # miscount
        db.execute(  # a chunk row whose document is gone, with a vector in no index
            "INSERT INTO chunks (doc_id, ordinal, text, tokens, text_hash, embedding, version) "
            "VALUES (99, 0, 'stray', 1, 'x', ?, 1)",
            (np.zeros(256, dtype=np.float32).tobytes(),),
        )
    code, report = checked()
    assert code == 1
    text = "\n".join(report["problems"])
    assert "recorded as 7 chunks, has 1" in text
    assert "1 chunk(s) belong to no document" in text
    assert "keyword index: 2 chunk(s) missing" in text  # the gap and the stray chunk
    assert "vectors.faiss" not in text and "Milvus" not in text  # a cache: rebuilt, not a problem
    missing = {"faiss": "1 chunk(s) had no vector", "milvus": "it held 3 vectors for 4 chunks"}
    assert f"({missing[os.environ['KB_VECTOR_STORE']]}; 4 vectors)" in report["repaired"][0]
    code, report = checked("--repair")
    assert code == 0 and report["ok"], report
    assert report["chunks"] == report["vectors"] == 3
    assert kb("search", "apt packages", "-k", "1").exit_code == 0


@pytest.mark.usefixtures("vector_store")
def test_edited_and_deleted_sources_are_listed_but_not_problems(
    folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "docs" / "d0.txt").write_text("edited", encoding="utf-8")
    (tmp_path / "docs" / "d1.txt").unlink()
    code, report = checked()
    assert code == 0 and report["ok"]
    assert sorted(s.rsplit("/", 1)[1] for s in report["changed_sources"]) == [
        "d0.txt (changed; 'kb ingest' updates it)",
        "d1.txt (gone)",
    ]


def test_human_output_names_problems_and_the_repair(folder: Path) -> None:
    (folder / INDEX_NAME).unlink()
    (folder / "manifest.json").write_text("{}", encoding="utf-8")
    result = kb("check")
    assert result.exit_code == 1
    assert "problem: " in result.output and "manifest.json" in result.output
    assert "repaired: rebuilt vectors.faiss from the catalog (it was missing" in result.output
    assert "'kb check --kb default --repair'" in result.output


def test_ivf_index_lists_every_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "IVF_FROM", 100)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    ids = np.arange(10, 610, dtype=np.int64)
    index = VectorIndex.build(16, 600, [(ids, vectors)], lambda n: vectors[:n])
    assert index.kind == "ivf" and sorted(index.ids()) == list(ids)
