"""The Milvus vector store: Milvus Lite in the knowledge base's folder, and a Milvus server by
URI (Milvus Lite's own gRPC server, started as a separate process on loopback).

The catalog stays the truth; the collection is a derived index stamped with the catalog
version it reflects, so these tests damage it in each way that matters (a crash between the
commit and the upsert, a stamp ahead of the catalog, vectors missing or extra, another
process holding Milvus Lite) and check that it is never served stale, empty or duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.cli import main
from kb_assistant.errors import (
    ConfigError,
    CorruptKnowledgeBase,
    KnowledgeBaseError,
    KnowledgeBaseLocked,
    ModelError,
)
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.processes import stop
from kb_assistant.reindex import reindex
from kb_assistant.settings import load_settings
from kb_assistant.vectorstore import milvus_index
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase
from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.milvus_index import LITE_NAME, MilvusBackend, MilvusIndex
from kb_assistant.vectorstore.vector_store import FaissBackend
from tests.ports import free_port

TOPICS = {
    "apt.txt": "apt installs Debian packages from the archive",
    "net.txt": "ifupdown configures network interfaces at boot",
    "kernel.txt": "modprobe loads kernel modules and their dependencies",
    "cook.txt": "simmer the tomatoes with garlic and olive oil",
}


def write_docs(folder: Path, docs: dict[str, str] = TOPICS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def open_assistant(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch, store: str, **env: str
) -> Assistant:
    monkeypatch.setenv("KB_VECTOR_STORE", store)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return build_assistant(load_settings(kb_home), embeddings=HashEmbedder())


def in_step(kb: KnowledgeBase) -> None:
    """The store holds exactly the catalog's chunk ids, once each, stamped with its version."""
    held = kb.index().ids()
    assert sorted(held.tolist()) == sorted(kb.catalog.chunk_ids().tolist())
    assert len(np.unique(held)) == len(held)
    if kb.backend.shared:
        assert kb.backend.load()[1] == kb.catalog.version()


def collection(kb: KnowledgeBase) -> MilvusBackend:
    assert isinstance(kb.backend, MilvusBackend)
    return kb.backend


@pytest.fixture
def milvus(kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Assistant]:
    """An assistant on Milvus Lite with four documents ingested."""
    assistant = open_assistant(kb_home, monkeypatch, "milvus")
    assistant.ingest([write_docs(tmp_path / "docs")])
    yield assistant
    assistant.close()


def test_milvus_lite_keeps_its_collection_in_the_knowledge_base_folder(milvus: Assistant) -> None:
    kb = milvus.knowledge_base()
    assert (kb.folder / LITE_NAME).is_dir() and not (kb.folder / "vectors.faiss").exists()
    assert kb.index().kind == "milvus:FLAT" and kb.index().count == 4
    assert Path(milvus.search("network interfaces", k=1)[0].chunk.source).name == "net.txt"
    assert collection(kb).name.startswith("kb_default_256_")  # name, dimension, identity hash
    in_step(kb)


def test_search_returns_the_same_chunk_ids_and_cosines_as_faiss(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(7, 607, dtype=np.int64)  # chunk ids, not positions
    manifest = Manifest.new("same", "random", 64, 0, 0)
    exact = FaissBackend(tmp_path, 64).build(600, [(ids, vectors)], lambda n: vectors[:n])
    backend = MilvusBackend(tmp_path, manifest)
    try:
        milvus = backend.build(600, [(ids[:300], vectors[:300]), (ids[300:], vectors[300:])],
                               lambda n: vectors[:n])  # fmt: skip
        queries = rng.standard_normal((20, 64)).astype(np.float32)
        for query in queries / np.linalg.norm(queries, axis=1, keepdims=True):
            expected, found = exact.search(query, 10), milvus.search(query, 10)
            assert [i for i, _ in found] == [i for i, _ in expected]
            assert np.allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
        assert milvus.search(vectors[0], 0) == [] and milvus.count == 600
    finally:
        backend.close()


def test_switching_the_setting_back_and_forth_never_reads_a_stale_store(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path / "docs", {"apt.txt": TOPICS["apt.txt"]})
    first = open_assistant(kb_home, monkeypatch, "faiss")
    first.ingest([docs])
    first.close()
    on_milvus = open_assistant(kb_home, monkeypatch, "milvus")
    on_milvus.ingest([write_docs(docs, {"net.txt": TOPICS["net.txt"]})])  # FAISS falls behind
    on_milvus.remove(["apt.txt"])
    on_milvus.close()
    back = open_assistant(kb_home, monkeypatch, "faiss")  # vectors.faiss replayed to the catalog
    try:
        assert [Path(h.chunk.source).name for h in back.search("configures", k=5)] == ["net.txt"]
        in_step(back.knowledge_base())
    finally:
        back.close()


def test_updates_and_removals_reach_the_collection_and_a_reopen_trusts_the_stamp(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    docs = tmp_path / "docs"
    (docs / "net.txt").write_text("netplan now configures the interfaces", encoding="utf-8")
    report = milvus.ingest([docs])
    assert report.updated == [str(docs / "net.txt")]
    milvus.remove(["cook.txt"])
    in_step(milvus.knowledge_base())
    assert "olive" not in {h.chunk.text for h in milvus.search("olive oil tomatoes", k=5)}
    milvus.close()
    with caplog.at_level(logging.WARNING):
        again = open_assistant(kb_home, monkeypatch, "milvus")
        assert Path(again.search("netplan", k=1)[0].chunk.source).name == "net.txt"
        in_step(again.knowledge_base())
        again.close()
    assert "rebuild" not in caplog.text and "disagree" not in caplog.text


def test_a_failure_between_the_commit_and_the_upsert_is_reported_added_and_replayed_on_open(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    kb = milvus.knowledge_base()
    stamped = kb.backend.load()[1]
    upsert, failures = MilvusIndex.add, [KnowledgeBaseError("Milvus went away")]

    def flaky(self: MilvusIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
        if failures:
            raise failures.pop()
        upsert(self, ids, vectors)

    more = write_docs(tmp_path / "more", {"vim.txt": "vim edits text", "zsh.txt": "zsh prompts"})
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(MilvusIndex, "add", flaky)
        report = milvus.ingest([more])
    # Both documents were committed, so both are reported added; the first one's vectors never
    # reached Milvus, so the collection is left alone (and unstamped) for the rest of the ingest.
    assert report.failed == [] and sorted(report.added) == [str(more / "vim.txt"),
                                                            str(more / "zsh.txt")]  # fmt: skip
    assert {"vim.txt", "zsh.txt"} <= {d.name for d in kb.documents()}
    assert kb.catalog.chunk_count() == 6 and kb.backend.load()[1] == stamped
    assert "did not follow catalog version" in caplog.text and "Milvus went away" in caplog.text
    milvus.close()
    again = open_assistant(kb_home, monkeypatch, "milvus")
    try:
        assert Path(again.search("vim edits", k=1)[0].chunk.source).name == "vim.txt"
        in_step(again.knowledge_base())  # caught up from the catalog on open
    finally:
        again.close()


def test_a_store_failure_while_the_writer_closes_keeps_the_report(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def down(*args: object) -> MilvusIndex:
        raise KnowledgeBaseError("Milvus went away")

    more = write_docs(tmp_path / "more", {"vim.txt": "vim edits text"})
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(MilvusIndex, "needs_rebuild", lambda self: True)  # a rebuild is due
        patch.setattr(MilvusBackend, "build", down)  # and Milvus is gone when it starts
        report = milvus.ingest([more])
    assert report.added == [str(more / "vim.txt")] and report.failed == []
    assert "could not bring" in caplog.text and "Milvus went away" in caplog.text
    assert "vim.txt" in {d.name for d in milvus.knowledge_base().documents()}
    milvus.close()
    again = open_assistant(kb_home, monkeypatch, "milvus")
    try:
        assert Path(again.search("vim edits", k=1)[0].chunk.source).name == "vim.txt"
        in_step(again.knowledge_base())
    finally:
        again.close()


KILLED_AFTER_COMMIT = """
import os, sys
from pathlib import Path
from kb_assistant.assistant import build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
from kb_assistant.vectorstore.milvus_index import MilvusIndex
upsert = MilvusIndex.add
def add(self, ids, vectors):
    upsert(self, ids[:1], vectors[:1])  # part of the document reached Milvus, then the kill
    os._exit(9)
MilvusIndex.add = add
assistant = build_assistant(load_settings(Path(sys.argv[1])), embeddings=HashEmbedder())
assistant.ingest([Path(sys.argv[2])])
"""


def test_a_process_killed_between_the_commit_and_the_upsert_loses_nothing(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    milvus.close()  # Milvus Lite serves one process at a time
    long = " ".join(f"word{i} topic{i % 7}" for i in range(900))  # several chunks
    more = write_docs(tmp_path / "more", {"long.txt": long})
    env = {**os.environ, "KB_VECTOR_STORE": "milvus"}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_COMMIT, str(kb_home), str(more)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 9, child.stderr[-2000:]
    again = open_assistant(kb_home, monkeypatch, "milvus")
    try:
        kb = again.knowledge_base()
        assert kb.catalog.chunk_count() > 5  # the document was committed before the kill
        in_step(kb)  # replayed: all of it, once
        assert Path(again.search("word17 topic3", k=1)[0].chunk.source).name == "long.txt"
    finally:
        again.close()


def test_a_stamp_behind_is_replayed_idempotently_and_one_ahead_is_rebuilt(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    kb = milvus.knowledge_base()
    version = kb.catalog.version()
    kb.backend.save(kb.index(), 0)  # as if every upsert since the start were to be replayed
    milvus.close()
    again = open_assistant(kb_home, monkeypatch, "milvus")
    assert again.knowledge_base().index().count == 4  # upserts: no duplicates
    in_step(again.knowledge_base())
    again.knowledge_base().backend.save(again.knowledge_base().index(), version + 5)
    again.close()
    with caplog.at_level(logging.WARNING):
        third = open_assistant(kb_home, monkeypatch, "milvus")
        in_step(third.knowledge_base())
        third.close()
    assert "newer than the catalog; rebuilding it" in caplog.text


def test_while_a_writer_holds_the_lock_readers_serve_the_collection_or_a_copy(
    milvus: Assistant, caplog: pytest.LogCaptureFixture
) -> None:
    kb = milvus.knowledge_base()
    query = milvus.embedder.embed_array(["modprobe kernel modules"])[0]
    expected = kb.index().search(query, 2)
    opened: list[KnowledgeBase] = []

    def reader() -> KnowledgeBase:
        opened.append(KnowledgeBase(kb.folder, kb.vectors))
        return opened[-1]

    try:
        with kb.locked():  # a writer at work in another process, as far as readers can tell
            kb.backend.save(kb.index(), 0)  # its stamp behind: it is catching up
            assert reader().index().search(query, 2) == expected  # served live, not replayed
            assert kb.backend.load()[1] == 0  # a reader never writes to a shared store
            kb.backend.discard()  # now it rebuilds the collection from scratch
            with caplog.at_level(logging.WARNING):
                copy = reader().index()
            assert copy.kind == "flat"
            assert copy.search(query, 1)[0][0] == expected[0][0]
            assert "being rebuilt; searching a copy made from the catalog" in caplog.text
        in_step(reader())  # the lock is free: the first reader brings the collection back
    finally:
        for base in opened:
            base.close()


def check_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["check", "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_kb_check_compares_the_collection_with_the_catalog_and_resyncs_it(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = milvus.knowledge_base()
    index = kb.index()
    ids = kb.catalog.chunk_ids()
    index.remove(ids[:2])  # vectors lost behind the stamp's back
    index.add(np.array([999_999]), np.ones((1, 256), dtype=np.float32) / 16)  # and a stray one
    milvus.close()
    report = check_json()
    assert report["ok"] and report["vectors"] == 4, report
    assert report["repaired"] == [
        f"rebuilt Milvus collection '{collection(kb).name}' from the catalog "
        "(it held 3 vectors for 4 chunks; 4 vectors)"
    ]
    assert check_json() == {**report, "repaired": []}
    again = open_assistant(kb_home, monkeypatch, "milvus")
    try:
        in_step(again.knowledge_base())
    finally:
        again.close()


def test_the_index_type_follows_the_size_and_readers_never_see_a_half_built_collection(
    milvus: Assistant, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(milvus_index, "EXACT_UP_TO", 6)
    kb = milvus.knowledge_base()
    reader = kb.index()
    milvus.ingest(
        [write_docs(tmp_path / "more", {f"n{i}.txt": f"note {i} zebra{i}" for i in range(4)})]
    )
    assert kb.index().kind == "milvus:AUTOINDEX" and kb.index().count == 8
    query = milvus.embedder.embed_array(["zebra2"])[0]
    assert reader.search(query, 1) == kb.index().search(query, 1)  # by alias: the new collection
    assert Path(milvus.search("zebra2", k=1)[0].chunk.source).name == "n2.txt"
    in_step(kb)
    client = collection(kb).client()
    assert [c for c in client.list_collections() if c.startswith(collection(kb).name)] == [
        client.describe_alias(collection(kb).name)["collection_name"]
    ]  # the collection it replaced was dropped


def test_reindex_moves_to_a_collection_of_the_new_dimension(milvus: Assistant) -> None:
    kb = milvus.knowledge_base()
    old = collection(kb).name
    reindex(kb, HashEmbedder(dimension=128))
    assert collection(kb).name.startswith("kb_default_128_") and kb.index().dimension == 128
    in_step(kb)
    assert not any(c.startswith(old) for c in collection(kb).client().list_collections())


class OtherHashEmbedder(HashEmbedder):
    """Another model of the same dimension: its vectors are the hash model's, rolled."""

    def __init__(self) -> None:
        super().__init__()
        self.model_id = "other-hash-256"

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        return np.roll(super().embed_array(texts), 1, axis=1)


def test_a_failed_reindex_leaves_the_old_collection_searchable_throughout(
    milvus: Assistant,
) -> None:
    kb = milvus.knowledge_base()
    physical = collection(kb).client().describe_alias(collection(kb).name)["collection_name"]
    query = milvus.embedder.embed_array(["modprobe kernel modules"])[0]
    expected = kb.index().search(query, 2)
    readers: list[KnowledgeBase] = []

    def batches() -> Iterator[tuple[list[int], np.ndarray]]:
        ids = kb.catalog.chunk_ids().tolist()
        yield ids[:1], HashEmbedder(dimension=128).embed_array(["first"])
        readers.append(KnowledgeBase(kb.folder, kb.vectors))  # another reader, mid-commit
        live = readers[-1].index()
        assert live.kind == "milvus:FLAT" and live.search(query, 2) == expected  # not a copy
        raise KnowledgeBaseError("the new model failed")

    try:
        with kb.locked(), pytest.raises(KnowledgeBaseError, match="the new model failed"):
            kb.switch_embeddings(replace(kb.manifest, embedding_model="new", dimension=128),
                                 batches())  # fmt: skip
        with pytest.raises(ModelError):  # the re-embed itself fails
            reindex(kb, FailingEmbedder())
        assert kb.manifest.dimension == 256 and kb.index().search(query, 2) == expected
        client = collection(kb).client()
        assert client.describe_alias(collection(kb).name)["collection_name"] == physical
        in_step(kb)
    finally:
        for reader in readers:
            reader.close()


class FailingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        super().__init__(dimension=128)

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        raise ModelError("the new model failed")


def test_reindex_to_another_model_of_the_same_dimension_never_serves_the_old_vectors(
    milvus: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = milvus.knowledge_base()
    name = collection(kb).name
    old = collection(kb).client().describe_alias(name)["collection_name"]
    build, seen = MilvusBackend.build, []

    def build_and_look(self: MilvusBackend, *args: Any) -> MilvusIndex:
        # Committed, not yet rebuilt: the alias still names the old model's collection, and
        # a reader, finding it built for another model, searches a copy of the catalog.
        reader = KnowledgeBase(kb.folder, kb.vectors)
        try:
            seen.append(reader.index().kind)
        finally:
            reader.close()
        return build(self, *args)

    monkeypatch.setattr(MilvusBackend, "build", build_and_look)
    reindex(kb, OtherHashEmbedder())
    assert seen == ["flat"]
    assert collection(kb).name == name and kb.manifest.embedding_model == "other-hash-256"
    query = OtherHashEmbedder().embed_array(["modprobe kernel modules"])[0]
    assert Path(kb.search(query, 1)[0].chunk.source).name == "kernel.txt"
    assert old not in collection(kb).client().list_collections()
    in_step(kb)


def test_a_reindex_whose_collection_fails_after_the_commit_is_done_and_rebuilt_on_open(
    milvus: Assistant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kb = milvus.knowledge_base()
    old = collection(kb).name

    def fails(self: MilvusBackend, *args: Any) -> MilvusIndex:
        raise KnowledgeBaseError("Milvus went away")

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(MilvusBackend, "build", fails)
        report = reindex(kb, HashEmbedder(dimension=128))  # committed: not an error
    assert report.dimension == 128 and kb.manifest.dimension == 128
    assert "was not built" in caplog.text and "Milvus went away" in caplog.text
    in_step(kb)  # rebuilt from the catalog on the next read
    assert not any(c.startswith(old) for c in collection(kb).client().list_collections())


def test_a_collection_built_for_another_model_is_not_loaded(milvus: Assistant) -> None:
    kb = milvus.knowledge_base()
    other = MilvusBackend(kb.folder, replace(kb.manifest, embedding_model="other-hash-256"))
    try:
        assert other.name == collection(kb).name
        with pytest.raises(CorruptKnowledgeBase, match="built for embedding model 'fake-hash"):
            other.load()
    finally:
        other.close()


def test_discard_drops_only_this_knowledge_bases_collections(milvus: Assistant) -> None:
    backend = collection(milvus.knowledge_base())
    client = backend.client()
    strangers = [f"{backend.name}_other", f"{backend.name}_0123456789ab_x",
                 f"{backend.name}_256_0123abcd_0123456789ab"]  # fmt: skip
    for stranger in strangers:
        client.create_collection(stranger, dimension=4)
    backend.discard()
    assert sorted(c for c in client.list_collections() if c.startswith(backend.name)) == sorted(
        strangers
    )


def test_without_pymilvus_the_error_names_the_install_command(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    faiss = open_assistant(kb_home, monkeypatch, "faiss")
    faiss.ingest([write_docs(tmp_path / "docs")])
    faiss.close()
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    assistant = open_assistant(kb_home, monkeypatch, "milvus")
    try:
        with pytest.raises(ConfigError, match=r"pip install 'kb-assistant\[milvus\]'"):
            assistant.search("apt")
    finally:
        assistant.close()


HOLD_LITE = """
import sys
from pymilvus import MilvusClient
MilvusClient(uri=sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def test_milvus_lite_open_in_another_process_is_a_clear_error(
    milvus: Assistant, kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = milvus.knowledge_base().folder / LITE_NAME
    milvus.close()
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_LITE, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        blocked = open_assistant(kb_home, monkeypatch, "milvus")
        try:
            with pytest.raises(KnowledgeBaseLocked, match="Milvus Lite serves one process"):
                blocked.search("apt")
        finally:
            blocked.close()
    finally:
        other.kill()
        other.wait(timeout=30)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus gRPC server in its own process on loopback (milvus-lite's server command)."""
    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server") / "data"
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None:
                pytest.fail(f"the Milvus server exited with code {server.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail(f"the Milvus server did not listen on 127.0.0.1:{port} within 60 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server, 15)


def test_a_milvus_server_by_uri_is_shared_by_readers_and_the_writer(
    milvus_server: str, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writer = open_assistant(kb_home, monkeypatch, "milvus", KB_MILVUS_URI=milvus_server)
    reader = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    try:
        writer.ingest([write_docs(tmp_path / "docs")])
        kb = writer.knowledge_base()
        assert not (kb.folder / LITE_NAME).exists() and milvus_server in kb.backend.label
        assert Path(reader.search("modprobe kernel", k=1)[0].chunk.source).name == "kernel.txt"
        writer.remove(["kernel.txt"])
        assert "kernel.txt" not in {Path(h.chunk.source).name for h in reader.search("modprobe")}
        in_step(reader.knowledge_base())
        name = collection(kb).name
        reader.close()
        writer.delete_kb("default")  # the server's collection goes with the knowledge base
        probe = MilvusBackend(tmp_path, kb.manifest, uri=milvus_server)
        try:
            assert not any(c.startswith(name) for c in probe.client().list_collections())
        finally:
            probe.close()
    finally:
        reader.close()
        writer.close()


INGEST = """
import sys
from pathlib import Path
from kb_assistant.assistant import build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
assistant = build_assistant(load_settings(Path(sys.argv[1])), embeddings=HashEmbedder())
for path in sorted(Path(sys.argv[2]).iterdir()):
    assistant.ingest([path])
assistant.close()
"""


def test_a_reader_in_another_process_than_the_writer_serves_the_live_collection(
    milvus_server: str, kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reader = open_assistant(kb_home, monkeypatch, "milvus", KB_MILVUS_URI=milvus_server)
    reader.create_kb("default")
    docs = {f"d{i}.txt": f"reader topic {i} " + " ".join(f"w{i}x{j}" for j in range(300))
            for i in range(8)}  # fmt: skip
    env = {**os.environ, "KB_VECTOR_STORE": "milvus", "KB_MILVUS_URI": milvus_server}
    writer = subprocess.Popen(
        [sys.executable, "-c", INGEST, str(kb_home), str(write_docs(tmp_path / "docs", docs))],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        while writer.poll() is None:
            kb = reader.knowledge_base()
            seen.add(len(kb.documents()))
            hits = reader.search("reader topic 3", k=3)  # never an error, never a half document
            assert all(h.chunk.source.endswith(".txt") for h in hits)
            time.sleep(0.05)
        assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
        assert len(seen) > 1, "the reader never saw the write progress"
        in_step(reader.knowledge_base())
        assert Path(reader.search("w5x7", k=1)[0].chunk.source).name == "d5.txt"
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=30)
        reader.delete_kb("default")
        reader.close()


def test_an_unreachable_server_is_a_clear_error(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(milvus_index, "CONNECT_TIMEOUT", 0.5)
    uri = f"http://127.0.0.1:{free_port()}"
    assistant = open_assistant(kb_home, monkeypatch, "milvus", KB_MILVUS_URI=uri)
    try:
        with pytest.raises(KnowledgeBaseError, match=f"cannot connect to Milvus at {uri}"):
            assistant.ingest([write_docs(tmp_path / "docs")])
    finally:
        assistant.close()


def test_deleting_a_knowledge_base_whose_server_is_down_names_the_collection_left(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(milvus_index, "CONNECT_TIMEOUT", 0.5)
    uri = f"http://127.0.0.1:{free_port()}"
    assistant = open_assistant(kb_home, monkeypatch, "milvus", KB_MILVUS_URI=uri)
    try:
        name = collection(assistant.create_kb("gone")).name
        for_json = collection(assistant.create_kb("gone-too")).name
    finally:
        assistant.close()
    result = CliRunner().invoke(main, ["kb", "delete", "gone", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"warning: deleted knowledge base 'gone', but its Milvus collection '{name}' "
        f"(Milvus at {uri}) could not be dropped ("
    ) and result.output.rstrip().endswith("drop it by hand")
    result = CliRunner().invoke(main, ["kb", "delete", "gone-too", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["deleted"] == "gone-too" and f"'{for_json}'" in data["warning"]
    assert not (kb_home / "kbs" / "gone").exists() and not (kb_home / "kbs" / "gone-too").exists()
