"""Large knowledge bases: the index turns IVF past a size, and keyword queries stay bounded.

The thresholds are lowered here so that the switch happens at thousands of vectors instead of
hundreds of thousands; the code paths are the ones a 10^6-chunk knowledge base takes
(``bench/retrieval_scale.py`` measures those at full size).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from kb_assistant.assistant import build_assistant
from kb_assistant.ingest import IngestProgress
from kb_assistant.settings import Settings
from kb_assistant.vectorstore import Library, vector_index
from kb_assistant.vectorstore.catalog import NewChunk
from kb_assistant.vectorstore.keywords import index_text
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase
from kb_assistant.vectorstore.vector_index import INDEX_NAME, VectorIndex

DIM = 32


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres, as embeddings of a corpus cluster by topic."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, DIM))
    unit: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def add_documents(kb: KnowledgeBase, texts: list[str], vectors: np.ndarray, per_doc: int) -> None:
    with kb.writer() as writer:
        for start in range(0, len(texts), per_doc):
            part = texts[start : start + per_doc]
            name = f"from-{part[0]}.txt"
            writer.begin_document(name, name, hashlib.sha256(name.encode()).hexdigest(), 0, "text")
            writer.add_chunks(
                [NewChunk(i, t, None, None, None, len(t.split()),
                          hashlib.sha1(t.encode()).hexdigest(), index_text(t))
                 for i, t in enumerate(part)],
                vectors[start : start + per_doc],
            )  # fmt: skip
            writer.commit_document(None, [])


@pytest.fixture
def small_ivf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "IVF_FROM", 2000)


def new_kb(home: Path) -> KnowledgeBase:
    return Library(home).create("big", embedding_model="test", dimension=DIM, chunk_tokens=128,
                                overlap=16)  # fmt: skip


def faiss_index(kb: KnowledgeBase) -> VectorIndex:
    index = kb.index()
    assert isinstance(index, VectorIndex)  # the default store: IVF training is FAISS's own
    return index


def test_index_turns_ivf_past_the_threshold_and_keeps_recall(
    small_ivf: None, tmp_path: Path
) -> None:
    kb = new_kb(tmp_path)
    vectors = clustered(6000)
    add_documents(kb, [f"passage {i}" for i in range(1500)], vectors[:1500], 500)
    assert kb.index().kind == "flat"
    add_documents(kb, [f"passage {i}" for i in range(1500, 6000)], vectors[1500:], 500)
    index = faiss_index(kb)  # reloaded from the snapshot the writer saved
    assert (index.kind, index.count, index.trained_for) == ("ivf", 6000, 6000)
    assert not index.needs_rebuild()
    queries = clustered(100, seed=1)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1  # chunk ids start at 1
    found = [[i for i, _ in index.search(q, 10)] for q in queries]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95
    # Scores are still exact cosines (the lists hold the vectors themselves).
    best, score = index.search(queries[0], 1)[0]
    assert score == pytest.approx(float(queries[0] @ vectors[best - 1]), abs=1e-5)


def test_ivf_snapshot_round_trips_and_shrinking_returns_to_flat(
    small_ivf: None, tmp_path: Path
) -> None:
    kb = new_kb(tmp_path)
    add_documents(kb, [f"p{i}" for i in range(3000)], clustered(3000), 500)
    loaded, _ = VectorIndex.load(kb.folder / INDEX_NAME, DIM)
    assert (loaded.kind, loaded.count, loaded.trained_for) == ("ivf", 3000, 3000)
    with kb.writer() as writer:
        for doc in kb.documents()[:5]:
            writer.remove_document(doc.doc_id)
    assert (kb.index().kind, kb.index().count) == ("flat", 500)  # < IVF_FROM / 2: exact again


def test_ivf_is_retrained_when_the_knowledge_base_grows_fourfold(
    small_ivf: None, tmp_path: Path
) -> None:
    kb = new_kb(tmp_path)
    vectors = clustered(11000)
    add_documents(kb, [f"p{i}" for i in range(2500)], vectors[:2500], 2500)
    assert faiss_index(kb).trained_for == 2500
    add_documents(kb, [f"p{i}" for i in range(2500, 9000)], vectors[2500:9000], 6500)
    assert faiss_index(kb).trained_for == 2500  # 9000 <= 4 x 2500: the centroids still serve
    add_documents(kb, [f"p{i}" for i in range(9000, 11000)], vectors[9000:], 2000)
    assert faiss_index(kb).trained_for == 11000


def test_keyword_search_leaves_out_the_commonest_words_past_the_budget(tmp_path: Path) -> None:
    kb = new_kb(tmp_path)
    texts = [f"table row {i}" for i in range(300)] + ["vacuum table wraparound"] * 3
    add_documents(kb, texts, clustered(len(texts)), 303)
    catalog = kb.catalog
    everything = catalog.keyword_search(["table", "wraparound"], 5, budget=10_000)
    bounded = catalog.keyword_search(["table", "wraparound"], 5, budget=100)
    # "table" is in 303 chunks: past a budget of 100 only "wraparound" (3 chunks) is scored.
    assert [i for i, _ in bounded] == [301, 302, 303]
    assert {i for i, _ in everything[:3]} == {301, 302, 303}  # same winners, all words scored
    assert catalog.keyword_search(["table", "row"], 5, budget=100) == []  # every word too common
    assert catalog.keyword_search([], 5) == []


def test_ingest_says_when_it_rebuilds_the_index_for_a_new_size(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    monkeypatch.setattr(vector_index, "IVF_FROM", 40)
    text = "\n\n".join(f"Paragraph {i} about topic {i % 7} and word{i}." * 8 for i in range(80))
    (tmp_path / "many.txt").write_text(text, encoding="utf-8")
    assistant = build_assistant(settings)
    events: list[IngestProgress] = []
    report = assistant.ingest([tmp_path / "many.txt"], progress=events.append)
    assert report.chunks_added >= 40
    assert [e.indexing for e in events].count(True) == 1 and events[-1].indexing
    assert events[-1].chunks_done == report.chunks_added
    assert assistant.knowledge_base().index().kind == "ivf"
    # Below the threshold nothing is rebuilt, and nothing says so.
    (tmp_path / "one.txt").write_text("One short paragraph.", encoding="utf-8")
    quiet: list[IngestProgress] = []
    assistant.ingest([tmp_path / "one.txt"], progress=quiet.append)
    assert not any(e.indexing for e in quiet)
