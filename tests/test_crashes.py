"""Crashes and faults while writing (hardening items 3, 4 and 5).

Item 3 kills a writer with SIGKILL at its n-th write, fsync or rename, for every n until the
run completes, then at timed moments that land inside SQLite's own code. After each kill the
knowledge base must open, hold as many vectors as chunks, pass ``kb check``, and hold every
document either as it was before the run or as the run meant to leave it.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import KnowledgeBaseError
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings, load_settings
from kb_assistant.vectorstore import catalog as catalog_module
from kb_assistant.vectorstore import files as files_module
from kb_assistant.vectorstore import vector_index
from kb_assistant.vectorstore.integrity import check
from kb_assistant.vectorstore.knowledge_base import load_index
from kb_assistant.vectorstore.vector_store import FaissBackend

WRITES = ("begin", "put_document", "add_chunks", "finish_document", "commit", "delete_document")


def paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(
        f"Paragraph {i} explains {topic}, step {i}, in plain words." for i in range(n)
    )


def state(home: Path) -> dict[str, tuple[str, ...]]:
    """source file name -> its chunk texts, read straight from the catalog."""
    db = sqlite3.connect(home / "kbs" / "default" / "catalog.sqlite")
    try:
        rows = db.execute(
            "SELECT d.source, c.text FROM documents d JOIN chunks c ON c.doc_id = d.id "
            "ORDER BY d.id, c.ordinal"
        ).fetchall()
    finally:
        db.close()
    found: dict[str, list[str]] = {}
    for source, text in rows:
        found.setdefault(Path(source).name, []).append(text)
    return {name: tuple(texts) for name, texts in found.items()}


# --- the writer that gets killed (runs in a forked child) --------------------------------


def _kill_at(n: int) -> Any:
    count = [0]

    def point() -> None:
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return point, count


def _install_kill_points(kill_at: int) -> Any:
    """Count every write, fsync and rename of the product; SIGKILL at the ``kill_at``-th."""
    point, count = _kill_at(kill_at)
    fsync, replace = os.fsync, os.replace

    def counted_fsync(fd: int) -> None:
        point()
        fsync(fd)

    def counted_replace(a: Any, b: Any) -> None:
        point()
        replace(a, b)

    os.fsync, os.replace = counted_fsync, counted_replace  # type: ignore[assignment]
    for name in WRITES:
        method = getattr(catalog_module.Catalog, name)

        def wrapped(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            point()
            return _method(*args, **kwargs)

        setattr(catalog_module.Catalog, name, wrapped)
    atomic_writer = files_module.atomic_writer

    @contextlib.contextmanager
    def counted_writer(path: Path) -> Iterator[Any]:
        with atomic_writer(path) as fh:
            write = fh.write

            def counted_write(data: Any) -> int:
                point()
                return write(data)

            fh.write = counted_write  # type: ignore[method-assign]
            yield fh

    setattr(vector_index, "atomic_writer", counted_writer)  # noqa: B010 (not exported)
    return count


def _writer(home: str, docs: str, kill_at: int, done: Any) -> None:
    """Update one document, add two, remove one; SIGKILL at the ``kill_at``-th write point."""
    count = _install_kill_points(kill_at)
    assistant = build_assistant(load_settings(Path(home)), embeddings=HashEmbedder())
    folder = Path(docs)
    assistant.ingest([folder / "kept.txt", folder / "new1.txt", folder / "new2.txt"])
    assistant.remove(["gone.txt"])
    assistant.close()
    done.value = count[0]


@pytest.fixture(scope="module")
def forkserver() -> Any:
    """Children forked from a server that has the product imported: ~20 ms each, not ~1 s."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["kb_assistant.assistant", "kb_assistant.ingest", "tests.test_crashes"]
    )
    warm = context.Process(target=time.sleep, args=(0,))  # starts the server (~1 s) now
    warm.start()
    warm.join()
    return context


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path, dict[str, set[tuple[str, ...]]], dict[str, Any]]:
    """A knowledge base before the run, the files of the run, and each document's allowed
    states (before or after; absent is allowed where one side lacks it)."""
    base, docs = tmp_path / "base", tmp_path / "docs"
    docs.mkdir()
    (docs / "kept.txt").write_text(paragraphs("the old kept text", 60), encoding="utf-8")
    (docs / "gone.txt").write_text(paragraphs("a document to remove", 40), encoding="utf-8")
    first = build_assistant(load_settings(base), embeddings=HashEmbedder())
    first.ingest([docs / "kept.txt", docs / "gone.txt"])
    first.close()
    (docs / "kept.txt").write_text(paragraphs("the new kept text", 70), encoding="utf-8")
    (docs / "new1.txt").write_text(paragraphs("first new topic", 50), encoding="utf-8")
    (docs / "new2.txt").write_text(paragraphs("second new topic", 50), encoding="utf-8")
    before = state(base)
    after_home = tmp_path / "after"
    shutil.copytree(base, after_home)
    finished = build_assistant(load_settings(after_home), embeddings=HashEmbedder())
    finished.ingest([docs / "kept.txt", docs / "new1.txt", docs / "new2.txt"])
    finished.remove(["gone.txt"])
    finished.close()
    after = state(after_home)
    allowed: dict[str, set[tuple[str, ...]]] = {}
    for name in set(before) | set(after):
        allowed[name] = {s.get(name, ()) for s in (before, after)}
    return base, docs, allowed, after


def assert_whole(home: Path, allowed: dict[str, set[tuple[str, ...]]], what: str) -> None:
    report = check(home / "kbs" / "default")
    assert report.ok, (what, report.problems)
    assert report.vectors == report.chunks, what
    current = state(home)
    for name, states in allowed.items():
        assert current.get(name, ()) in states, (what, name, len(current.get(name, ())))
    reopened = build_assistant(load_settings(home), embeddings=HashEmbedder())
    kb = reopened.knowledge_base()
    assert kb.index().count == kb.catalog.chunk_count() == report.chunks, what
    assert all(d.status == "ready" and d.chunks > 0 for d in kb.documents()), what
    reopened.close()


def test_sigkill_at_every_write_fsync_and_rename(
    forkserver: Any, scene: Any, tmp_path: Path
) -> None:
    base, docs, allowed, after = scene
    n, points = 1, None
    while points is None:
        home = tmp_path / f"run{n}"
        shutil.copytree(base, home)
        done = forkserver.Value("i", -1)
        child = forkserver.Process(target=_writer, args=(str(home), str(docs), n, done))
        child.start()
        child.join(120)
        if child.exitcode == 0:
            points = done.value  # the run completed: n passed its last write point
            assert_whole(home, allowed, "completed run")
            assert state(home) == after
            break
        assert child.exitcode == -signal.SIGKILL, f"point {n}: exit {child.exitcode}"
        assert_whole(home, allowed, f"killed at write point {n}")
        shutil.rmtree(home)
        n += 1
    assert points is not None and points == n - 1 and n > 20  # every point was hit once


def test_sigkill_at_timed_moments(forkserver: Any, scene: Any, tmp_path: Path) -> None:
    """A whole run takes ~0.1 s: kills every 7 ms of it land inside SQLite and FAISS code."""
    base, docs, allowed, _ = scene
    killed = 0
    for delay_ms in range(3, 140, 7):
        home = tmp_path / f"run{delay_ms}"
        shutil.copytree(base, home)
        done = forkserver.Value("i", -1)
        child = forkserver.Process(target=_writer, args=(str(home), str(docs), 10**9, done))
        child.start()
        time.sleep(delay_ms / 1000)
        if child.is_alive():
            os.kill(child.pid or 0, signal.SIGKILL)
        child.join(60)
        killed += child.exitcode == -signal.SIGKILL
        assert_whole(home, allowed, f"killed after {delay_ms} ms (exit {child.exitcode})")
        shutil.rmtree(home)
    assert killed >= 8, f"only {killed} of 20 runs were killed before they finished"


def _first_ingest(home: str, docs: str, kill_at: int, done: Any) -> None:
    """The first ingest of a new knowledge base; SIGKILL at the ``kill_at``-th write point."""
    count = _install_kill_points(kill_at)
    build_assistant(load_settings(Path(home)), embeddings=HashEmbedder()).ingest([Path(docs)])
    done.value = count[0]


def test_a_killed_first_ingest_leaves_a_cache_to_rebuild_once(
    forkserver: Any, tmp_path: Path
) -> None:
    """Killed at points across a first ingest (no vectors.faiss saved yet, or a stale one):
    the documents that committed are there, ``kb check`` is ok, and only the first open
    rebuilds the snapshot: it saves it, so the next open loads it as it is."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"d{i}.txt").write_text(paragraphs(f"first ingest topic {i}", 30), "utf-8")
    done = forkserver.Value("i", -1)
    child = forkserver.Process(target=_first_ingest, args=(str(tmp_path / "all"), str(docs),
                                                           10**9, done))  # fmt: skip
    child.start()
    child.join(120)
    points = done.value
    assert child.exitcode == 0 and points > 40
    opened = 0
    for n in range(2, points, max(1, points // 14)):
        home = tmp_path / f"run{n}"
        child = forkserver.Process(target=_first_ingest, args=(str(home), str(docs), n, done))
        child.start()
        child.join(120)
        assert child.exitcode == -signal.SIGKILL, f"point {n}: exit {child.exitcode}"
        folder = home / "kbs" / "default"
        if not (folder / "catalog.sqlite").is_file():
            continue  # killed before the knowledge base existed
        opened += 1
        if n % 2:  # the first open is a check
            report = check(folder)
            assert report.ok and report.problems == [], (n, report.problems)
            assert report.vectors == report.chunks and not report.notes, n
        else:  # the first open is a search
            reader = build_assistant(load_settings(home), embeddings=HashEmbedder())
            reader.search("first ingest topic", k=3)
            reader.close()
        catalog = catalog_module.Catalog(folder / "catalog.sqlite")
        try:
            backend = FaissBackend(folder, HashEmbedder().dimension)
            assert load_index(catalog, folder, backend).stale is None, f"point {n}"
        finally:
            catalog.close()
        again = check(folder)
        assert again.ok and again.repaired == [] and again.vectors == again.chunks, n
    assert opened >= 10


# --- item 4: disk full --------------------------------------------------------------------


def one_document(assistant: Assistant, tmp_path: Path) -> Path:
    """Ingest a.txt; returns the folder where the next document, b.txt, is written."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(paragraphs("apples", 5), encoding="utf-8")
    assistant.ingest([docs / "a.txt"])
    (docs / "b.txt").write_text(paragraphs("bananas", 5), encoding="utf-8")
    return docs


def test_disk_full_while_saving_the_vector_file_keeps_the_old_one(
    assistant: Assistant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = one_document(assistant, tmp_path)
    folder = assistant.knowledge_base().folder
    saved = (folder / "vectors.faiss").read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(KnowledgeBaseError, match="No space left on device") as caught:
        assistant.ingest([docs / "b.txt"])
    assert "the previous version is unchanged" in str(caught.value)
    assert (folder / "vectors.faiss").read_bytes() == saved
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    monkeypatch.undo()
    # b.txt's rows were committed before the save failed: the snapshot is stale, not wrong.
    report = check(folder)
    assert report.ok and report.chunks == report.vectors == 2


def test_disk_full_inside_the_catalog_leaves_it_as_it_was(
    assistant: Assistant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = one_document(assistant, tmp_path)
    before = state(assistant.settings.home)
    add = catalog_module.Catalog.add_chunks

    def full(self: Any, *args: Any, **kwargs: Any) -> Any:
        add(self, *args, **kwargs)
        raise sqlite3.OperationalError("database or disk is full")  # what SQLITE_FULL reads

    monkeypatch.setattr(catalog_module.Catalog, "add_chunks", full)
    report = assistant.ingest([docs / "b.txt"])
    assert [f.error for f in report.failed] == ["cannot store: database or disk is full"]
    monkeypatch.undo()
    assert state(assistant.settings.home) == before
    assert check(assistant.knowledge_base().folder).ok


# --- item 5: concurrent writers, and readers during a write --------------------------------


def _ingest_process(home: str, folder: str) -> None:
    build_assistant(load_settings(Path(home)), embeddings=HashEmbedder()).ingest([Path(folder)])


def test_two_ingest_processes_are_serialised(
    forkserver: Any, settings: Settings, tmp_path: Path
) -> None:
    build_assistant(settings, embeddings=HashEmbedder()).create_kb("default")
    for side in ("left", "right"):
        for i in range(6):
            path = tmp_path / side / f"{side}{i}.txt"
            path.parent.mkdir(exist_ok=True)
            path.write_text(paragraphs(f"{side} topic {i}", 30), encoding="utf-8")
    children = [
        forkserver.Process(target=_ingest_process, args=(str(settings.home), str(tmp_path / s)))
        for s in ("left", "right")
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    report = check(settings.home / "kbs" / "default")
    assert report.ok and report.documents == 12 and report.chunks == report.vectors
    db = sqlite3.connect(settings.home / "kbs" / "default" / "catalog.sqlite")
    ids = [r[0] for r in db.execute("SELECT id FROM chunks")]
    db.close()
    assert len(ids) == len(set(ids)) == report.chunks


def test_a_reader_during_a_write_sees_the_old_or_the_new_state(
    forkserver: Any, settings: Settings, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"d{i}.txt").write_text(paragraphs(f"reader topic {i}", 40), encoding="utf-8")
    reader = build_assistant(settings, embeddings=HashEmbedder())
    reader.create_kb("default")
    child = forkserver.Process(target=_ingest_process, args=(str(settings.home), str(docs)))
    seen: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            kb = reader.knowledge_base()
            with kb.catalog.snapshot():
                docs_now = kb.documents()
                chunks = kb.catalog.chunk_count()
            assert all(d.status == "ready" for d in docs_now)
            assert sum(d.chunks for d in docs_now) == chunks  # whole documents only
            count = kb.index().count
            seen.append((len(docs_now), chunks, count))
            reader.search("reader topic 3", k=3)

    thread = threading.Thread(target=read)
    child.start()
    thread.start()
    child.join(120)
    stop.set()
    thread.join(30)
    assert child.exitcode == 0
    assert len({s[0] for s in seen}) > 1, "the reader never saw the write progress"
    final = reader.knowledge_base()
    assert final.index().count == final.catalog.chunk_count()
    reader.close()
