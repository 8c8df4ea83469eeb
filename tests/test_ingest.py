"""Ingest: incremental, idempotent, per-file failures, crash safety, concurrency, scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kb_assistant import ingest as ingest_module
from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings
from tests.files import make_pdf
from tests.stores import vector_store  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(f"Paragraph {i} explains {topic} step {i} in plain words." for i in range(n))


def consistent(assistant: Assistant, kb: str | None = None) -> int:
    """Chunks in the catalog == vectors in the index == sum over documents; returns it."""
    base = assistant.knowledge_base(kb)
    chunks = base.catalog.chunk_count()
    assert base.index().count == chunks
    assert sum(d.chunks for d in base.documents()) == chunks
    return chunks


@pytest.mark.usefixtures("vector_store")
def test_second_run_adds_nothing_and_embeds_nothing(
    assistant: Assistant, embedder: HashEmbedder, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    write(folder / "a.md", "# A\n\n" + paragraphs("apt", 30))
    write(folder / "sub" / "b.txt", paragraphs("networking", 30))
    first = assistant.ingest([folder])
    assert len(first.added) == 2 and first.chunks_added > 2
    embedded = sum(embedder.calls)
    second = assistant.ingest([folder])
    assert second.to_json()["added"] == [] and second.updated == [] and second.chunks_added == 0
    assert sorted(Path(p).name for p in second.unchanged) == ["a.md", "b.txt"]
    assert sum(embedder.calls) == embedded
    assert consistent(assistant) == first.chunks_added


@pytest.mark.usefixtures("vector_store")
def test_changed_file_replaces_its_chunks_and_reuses_unchanged_vectors(
    assistant: Assistant, embedder: HashEmbedder, tmp_path: Path
) -> None:
    doc = write(
        tmp_path / "guide.md",
        "# Intro\n\nZebras graze.\n\n# Install\n\n" + paragraphs("install", 40),
    )
    assistant.ingest([doc])
    doc_id = assistant.documents()[0].doc_id
    before = sum(embedder.calls)
    write(doc, "# Intro\n\nGiraffes browse.\n\n# Install\n\n" + paragraphs("install", 40))
    report = assistant.ingest([doc])
    assert [Path(p).name for p in report.updated] == ["guide.md"]
    assert sum(embedder.calls) - before == 1  # only the edited section is embedded again
    texts = [h.chunk.text for h in assistant.search("zebras graze", k=50)]
    assert not any("Zebras" in t for t in texts)
    assert any("Giraffes" in t for t in texts)
    assert [d.doc_id for d in assistant.documents()] == [doc_id]
    consistent(assistant)


@pytest.mark.usefixtures("vector_store")
def test_remove_deletes_chunks_and_vectors_of_one_document(
    assistant: Assistant, tmp_path: Path
) -> None:
    keep = write(tmp_path / "keep.txt", paragraphs("kernels", 20))
    drop = write(tmp_path / "drop.txt", paragraphs("printers", 20))
    assistant.ingest([keep, drop])
    removed = assistant.remove(["drop.txt"])
    assert [d.name for d in removed] == ["drop.txt"]
    assert {Path(h.chunk.source).name for h in assistant.search("printers", k=50)} == {"keep.txt"}
    assert consistent(assistant) == assistant.documents()[0].chunks


def test_bad_inputs_fail_one_by_one_while_the_rest_ingests(
    assistant: Assistant, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    write(folder / "good one 中文 名字.md", "# 标题\n\n这是一个好文件。")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    write(folder / "notes.xyz", "unknown type")
    (folder / "loop").symlink_to(folder)
    (folder / "dangling.txt").symlink_to(folder / "missing.txt")
    explicit = write(tmp_path / "picture.png", "not an image")
    report = assistant.ingest([folder, explicit, tmp_path / "nowhere.txt"])
    assert [Path(p).name for p in report.added] == ["good one 中文 名字.md"]
    reasons = {Path(f.path).name: f.error for f in report.failed}
    assert reasons.pop("empty.txt") == "no text found"
    assert "damaged or not a PDF" in reasons.pop("broken.pdf")
    assert "symbolic link loop" in reasons.pop("loop")
    assert "broken symbolic link" in reasons.pop("dangling.txt")
    assert "not a readable image (not PNG, JPEG" in reasons.pop("picture.png")
    assert reasons.pop("nowhere.txt") == "no such file or directory"
    assert reasons == {}
    assert [(Path(s.path).name, s.error) for s in report.skipped] == [
        ("notes.xyz", "unsupported file type '.xyz'")
    ]
    assert all("\n" not in f.error for f in report.failed)
    consistent(assistant)


def test_zero_byte_file_reason(assistant: Assistant, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    report = assistant.ingest([tmp_path / "empty.txt"])
    assert report.failed[0].error == "no text found"


def test_file_that_disappears_mid_ingest_is_reported(
    assistant: Assistant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vanishing = make_pdf(tmp_path / "vanishing.pdf", ["Soon gone."])
    stays = write(tmp_path / "stays.txt", "I stay.")
    from kb_assistant.vectorstore.files import hash_file as real_hash

    def hash_then_delete(path: Path) -> tuple[int, str]:
        result = real_hash(path)
        if path.name == "vanishing.pdf":
            path.unlink()
        return result

    monkeypatch.setattr(ingest_module, "hash_file", hash_then_delete)
    report = assistant.ingest([vanishing, stays])
    assert [Path(p).name for p in report.added] == ["stays.txt"]
    assert [(Path(f.path).name, f.error) for f in report.failed] == [
        ("vanishing.pdf", "file disappeared while it was being read")
    ]


KILLER = """
import os, signal, sys
from kb_assistant.vectorstore.knowledge_base import KnowledgeBaseWriter
from kb_assistant.assistant import build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
original = KnowledgeBaseWriter.begin_document
started = []
def begin_then_die(self, *args, **kwargs):
    started.append(args[1])
    if len(started) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-ingest: documents before this one committed
    return original(self, *args, **kwargs)
KnowledgeBaseWriter.begin_document = begin_then_die
build_assistant(load_settings({home!r}), embeddings=HashEmbedder()).ingest([{folder!r}])
"""


@pytest.mark.parametrize("kill_at", [1, 3, 5])
def test_killed_ingest_leaves_whole_documents_only(
    settings: Settings, tmp_path: Path, kill_at: int
) -> None:
    folder = tmp_path / "docs"
    for i in range(5):
        write(folder / f"doc{i}.txt", paragraphs(f"topic{i}", 200))
    first = build_assistant(settings, embeddings=HashEmbedder())
    first.ingest([write(tmp_path / "before.txt", paragraphs("earlier", 10))])
    first.close()
    script = KILLER.format(kill_at=kill_at, home=str(settings.home), folder=str(folder))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == -9, result.stderr.decode()
    after = build_assistant(settings, embeddings=HashEmbedder())
    names = [d.name for d in after.documents()]
    assert names[0] == "before.txt" and len(names) <= kill_at  # nothing of the killed one
    for doc in after.documents():
        assert doc.status == "ready" and doc.chunks > 0
    consistent(after)
    report = after.ingest([folder])  # a re-run completes the rest
    assert len(report.added) == 5 - (len(names) - 1) and not report.failed
    consistent(after)


def test_two_concurrent_ingests_are_serialised(settings: Settings, tmp_path: Path) -> None:
    reports = []

    def run(name: str) -> None:
        a = build_assistant(settings, embeddings=HashEmbedder())
        files = [write(tmp_path / name / f"{name}{i}.txt", paragraphs(name, 15)) for i in range(5)]
        reports.append(a.ingest(files))
        a.close()

    build_assistant(settings, embeddings=HashEmbedder()).create_kb("default")
    threads = [threading.Thread(target=run, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r.added) for r in reports) == [5, 5]
    check = build_assistant(settings, embeddings=HashEmbedder())
    assert len(check.documents()) == 10
    assert consistent(check) == sum(r.chunks_added for r in reports)


def test_ten_thousand_files(assistant: Assistant, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(100):
        sub = folder / f"d{i:03d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j:03d}.txt").write_text(
                f"file {i} {j} mentions token{i}x{j}", encoding="utf-8"
            )
    report = assistant.ingest([folder])
    assert len(report.added) == 10_000 and not report.failed
    best = assistant.search("file 42 7 mentions token42x7", k=1)[0]
    assert Path(best.chunk.source).parts[-2:] == ("d042", "f007.txt")
    assert best.dense_score is not None and best.dense_score > 0.99
    assert consistent(assistant) == 10_000


def test_progress_reports_every_file(assistant: Assistant, tmp_path: Path) -> None:
    files = [write(tmp_path / f"{i}.txt", f"text {i}") for i in range(3)]
    seen: list[ingest_module.IngestProgress] = []
    assistant.ingest(files, progress=seen.append)
    assert seen[-1].files_done == 3 and seen[-1].files_total == 3


def test_report_json_has_the_stable_keys(assistant: Assistant, tmp_path: Path) -> None:
    data = assistant.ingest([write(tmp_path / "a.txt", "alpha")]).to_json()
    assert {"added", "updated", "unchanged", "failed", "chunks_added", "seconds"} <= set(data)
    json.dumps(data)
    assert os.path.isabs(data["added"][0])


@pytest.mark.parametrize("name", ["deck.pptx", "book.epub", "report.docx", "sheet.xlsx"])
def test_damaged_office_files_fail_alone(assistant: Assistant, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"PK\x03\x04 this is not really a zip archive")
    ok = write(tmp_path / "ok.txt", "still fine")
    report = assistant.ingest([tmp_path / name, ok])
    assert [Path(p).name for p in report.added] == ["ok.txt"]
    assert [Path(f.path).name for f in report.failed] == [name]
    assert report.failed[0].error.startswith("damaged or not a")
    assert "\n" not in report.failed[0].error
