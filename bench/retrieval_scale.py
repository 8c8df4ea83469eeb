"""Hybrid retrieval latency and dense recall at 10^4, 10^5 and 10^6 chunks.

Real material first: the PostgreSQL 15 manual (``apt-get install postgresql-doc-15``, 1,173 HTML
pages, ~18,000 chunks) is ingested once with the default embedder. Larger knowledge bases are
grown from it: each further chunk joins the first half of one real chunk to the second half of
another, and its vector is the normalised sum of theirs, so the texts keep the manual's word
statistics (what the keyword index feels) and the vectors stay where real embeddings lie.

Each size is built once under ``--cache`` and then, per query: ``kb search`` as users run it
(query embedding + dense + keyword + fusion + fetching the chunks, k=10), and its parts. Dense
recall@10 is measured against exact search over every stored vector (numpy).

Usage: python -m bench.retrieval_scale [--sizes 10000,100000,1000000] [--cache DIR] [--record]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import percentile, record_entry

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
QUERIES = 200


def source_chunks(cache: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Texts, headings and vectors of the real chunks (ingesting the manual the first time)."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    assistant = build_assistant(load_settings(cache / "source", model_cache=cache / "models"))
    if "manual" not in [s.name for s in assistant.list_kbs()]:
        if not MANUAL.is_dir():
            raise SystemExit(f"{MANUAL} is missing: apt-get install postgresql-doc-15")
        print("ingesting the PostgreSQL manual (once)...", file=sys.stderr)
        assistant.ingest([MANUAL], kb="manual")
    catalog = assistant.knowledge_base("manual").catalog
    with catalog.snapshot():
        rows = catalog._db.execute(
            "SELECT text, coalesce(heading, ''), embedding FROM chunks ORDER BY id"
        ).fetchall()
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    assistant.close()
    return [r[0] for r in rows], [r[1] for r in rows], vectors


def grown(texts: list[str], vectors: np.ndarray, n: int, seed: int = 7) -> Any:
    """``n`` chunks: the real ones, then half-and-half joins of two of them."""
    rng = np.random.default_rng(seed)
    halves = [t.split() for t in texts]
    for i in range(n):
        if i < len(texts):
            yield texts[i], vectors[i]
            continue
        a, b = rng.integers(0, len(texts), 2)
        words = halves[a][: len(halves[a]) // 2] + halves[b][len(halves[b]) // 2 :]
        vector = vectors[a] + vectors[b]
        yield " ".join(words), vector / np.linalg.norm(vector)


def build(home: Path, n: int, texts: list[str], vectors: np.ndarray, model_id: str) -> None:
    """A knowledge base ``scale`` of ``n`` chunks under ``home`` (skipped if already built)."""
    from kb_assistant.vectorstore.catalog import NewChunk
    from kb_assistant.vectorstore.keywords import index_text
    from kb_assistant.vectorstore.library import Library

    library = Library(home)
    if library.exists("scale"):
        kb = library.open("scale")
        if kb.catalog.chunk_count() == n:
            if kb.index().needs_rebuild():  # built before the index type changed
                with kb.writer() as writer:
                    writer.rebuild_index()
            return
        kb.close()
        library.delete("scale")
    kb = library.create("scale", embedding_model=model_id, dimension=vectors.shape[1],
                        chunk_tokens=128, overlap=16)  # fmt: skip
    started = time.perf_counter()
    per_doc = 2000
    source = grown(texts, vectors, n)
    with kb.writer() as writer:
        for doc in range(0, n, per_doc):
            batch = [next(source) for _ in range(min(per_doc, n - doc))]
            name = f"{doc // per_doc}.txt"
            digest = hashlib.sha256(name.encode()).hexdigest()
            writer.begin_document(f"synthetic/{name}", name, digest, 0, "text")
            chunks = [
                NewChunk(i, t, None, None, None, len(t.split()),
                         hashlib.sha1(t.encode()).hexdigest(), index_text(t))
                for i, (t, _) in enumerate(batch)
            ]  # fmt: skip
            writer.add_chunks(chunks, np.stack([v for _, v in batch]))
            writer.commit_document(None, [])
            if doc % 100_000 == 0:
                print(f"  {doc:>8} chunks, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    kb.close()
    print(f"built {n} chunks in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def exact_top(stored: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """The exact top-``k`` chunk ids of each query (brute force)."""
    scores = np.concatenate(
        [queries @ stored[i : i + 200_000].T for i in range(0, len(stored), 200_000)], axis=1
    )
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def measure_size(home: Path, queries: list[str]) -> dict[str, Any]:
    """Latency of kb search and its parts, and dense recall against exact search."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings
    from kb_assistant.vectorstore.keywords import query_terms

    assistant = build_assistant(load_settings(home, model_cache=home.parent / "models"))
    kb = assistant.knowledge_base("scale")
    embedder = assistant.embedder
    embedder.embed_array(["warm up"])
    started = time.perf_counter()
    index = kb.index()
    open_s = time.perf_counter() - started
    total: list[float] = []
    dense: list[float] = []
    keyword: list[float] = []
    embed: list[float] = []
    for q in queries:
        t0 = time.perf_counter()
        assistant.search(q, k=10, kb="scale")
        t1 = time.perf_counter()
        vector = embedder.embed_array([q])[0]
        t2 = time.perf_counter()
        kb.search(vector, 30)
        t3 = time.perf_counter()
        kb.keyword_search(query_terms(q), 30)
        t4 = time.perf_counter()
        for series, seconds in ((total, t1 - t0), (embed, t2 - t1), (dense, t3 - t2),
                                (keyword, t4 - t3)):  # fmt: skip
            series.append(1000 * seconds)
    vectors = embedder.embed_array(queries)
    found = [{i for i, _ in index.search(v, 10)} for v in vectors]
    ids, stored = zip(*kb.catalog.embeddings(), strict=True)
    exact = exact_top(np.concatenate(stored), np.concatenate(ids), vectors, 10)
    recall = float(np.mean([len(f & e) / 10 for f, e in zip(found, exact, strict=True)]))
    row = {
        "chunks": kb.catalog.chunk_count(), "index": index.kind, "open_s": round(open_s, 2),
        "p50_ms": percentile(total, 50), "p95_ms": percentile(total, 95),
        "embed_p95_ms": percentile(embed, 95), "dense_p95_ms": percentile(dense, 95),
        "keyword_p95_ms": percentile(keyword, 95), "dense_recall@10": round(recall, 4),
    }  # fmt: skip
    assistant.close()
    return row


def main() -> None:
    """Build the sizes, measure each, print (and record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) /
                        "kb-bench-scale")  # fmt: skip
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    texts, headings, vectors = source_chunks(args.cache)
    rng = np.random.default_rng(11)
    pool = sorted({" ".join(h.split()) for h in headings if len(h.split()) >= 2})
    queries = [pool[i] for i in rng.choice(len(pool), min(QUERIES, len(pool)), replace=False)]
    from kb_assistant.models.factory import build_embedder
    from kb_assistant.settings import load_settings

    model_id = build_embedder(
        load_settings(args.cache / "source", model_cache=args.cache / "models")
    ).model_id
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        home = args.cache / f"size-{n}"
        build(home, n, texts, vectors, model_id)
        rows.append(measure_size(home, queries))
        print(json.dumps(rows[-1]), file=sys.stderr)
    headers = ["chunks", "index", "open s", "kb search p50 ms", "p95 ms", "embed p95",
               "dense p95", "keyword p95", "dense recall@10 vs exact"]  # fmt: skip
    keys = ["chunks", "index", "open_s", "p50_ms", "p95_ms", "embed_p95_ms", "dense_p95_ms",
            "keyword_p95_ms", "dense_recall@10"]  # fmt: skip
    table = [headers, *[[r[k] for k in keys] for r in rows]]
    record_entry(
        "Retrieval latency at scale (hybrid, k=10)",
        "python -m bench.retrieval_scale --sizes " + args.sizes,
        table,
        [
            f"{len(queries)} queries (headings of the PostgreSQL manual); source: "
            f"{len(texts)} real chunks, grown as the script's docstring says."
        ],
        write=args.record,
    )


if __name__ == "__main__":
    main()
