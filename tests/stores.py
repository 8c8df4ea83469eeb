"""The vector stores the knowledge-base tests run against: FAISS and Milvus Lite.

A test that asks for ``vector_store`` (by argument, before ``settings``/``assistant``, or with
``@pytest.mark.usefixtures("vector_store")``) runs once per store; the store is chosen the way a
user chooses it, by ``KB_VECTOR_STORE``. Milvus Lite runs in this process, one small server per
``milvus.db`` folder, started on first use and stopped when the knowledge base closes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

STORES = ["faiss", "milvus"]


@pytest.fixture(params=STORES)
def vector_store(
    request: pytest.FixtureRequest, kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """``faiss`` or ``milvus`` (Milvus Lite in each knowledge base's folder)."""
    kind = str(request.param)
    monkeypatch.setenv("KB_VECTOR_STORE", kind)
    return kind
