"""FAISS (flat, exact) against Milvus Lite (FLAT and AUTOINDEX) behind the vector-store seam.

The same ``n`` unit vectors (synthetic, ``--dim`` numbers, seeded) go into each store through the
code a knowledge base uses (``VectorIndex.add``, ``MilvusIndex.add``: upserts of 2,000 rows).
The vectors are grouped in topics as real embeddings are (see ``data``); queries are stored
vectors plus noise.
Measured per store: insert throughput (vectors/s, until searchable: for AUTOINDEX until Milvus
Lite has built its HNSW segments), search latency for k=10 (p50/p95 over ``--queries`` queries,
one at a time, as ``kb search`` does), the time to reopen the store in a fresh connection, and
recall@10 against exact FAISS search.

Usage: python -m bench.vector_stores [--n 100000] [--dim 384] [--queries 300] [--record]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import percentile, record_entry
from kb_assistant.vectorstore import milvus_index

K = 10
BATCH = 10_000  # rows per add call, as the catalog yields them


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stored vectors in topics, and ``queries`` query vectors near some of them.

    Real embeddings cluster by topic; uniform random vectors do not (every neighbour of a
    query is then a near tie, the worst case for HNSW). So each vector is one of ``n / 50``
    random topic directions plus noise (cosine ~0.6 to its topic-mates, ~0 to the rest), and
    each query is a stored vector plus noise.
    """
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((max(1, n // 50), dim), dtype=np.float32))
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    vectors = unit(topics[rng.integers(len(topics), size=n)] + 0.8 * noise)
    near = vectors[rng.choice(n, queries, replace=False)]
    jitter = rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim)
    return vectors, unit(near + 0.5 * jitter)


def batches(vectors: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` as the catalog gives them; ids start at 1 like chunk ids."""
    for start in range(0, len(vectors), BATCH):
        part = vectors[start : start + BATCH]
        yield np.arange(start + 1, start + 1 + len(part), dtype=np.int64), part


def timed_searches(index: Any, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Each query's top-k ids, and each search's milliseconds."""
    for query in queries[:5]:
        index.search(query, K)  # warm-up: first calls pay for connections and caches
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query, K)
        times.append((time.perf_counter() - started) * 1000)
        found.append([i for i, _ in hits])
    return found, times


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact top-k that a store found."""
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def faiss_row(vectors: np.ndarray, queries: np.ndarray) -> tuple[list[Any], list[list[int]]]:
    """Insert into and search a flat FAISS index; its answers are the exact ones."""
    from kb_assistant.vectorstore.vector_index import VectorIndex

    started = time.perf_counter()
    index = VectorIndex(vectors.shape[1])
    for ids, part in batches(vectors):
        index.add(ids, part)
    insert = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "vectors.faiss"
        index.save(path, 1)
        started = time.perf_counter()
        VectorIndex.load(path, vectors.shape[1])
        reopen = time.perf_counter() - started
    found, times = timed_searches(index, queries)
    row = ["FAISS flat (exact)", round(len(vectors) / insert), round(reopen, 2),
           percentile(times, 50), percentile(times, 95), 1.0]  # fmt: skip
    return row, found


def wait_for_index(backend: Any) -> None:
    """Until Milvus Lite has flushed every row and built its index on every segment.

    Milvus Lite reports an index as finished at once and builds it in a background thread
    (searching unindexed segments exhaustively meanwhile); its own drain point (private API,
    for measuring only) waits for that thread.
    """
    from milvus_lite.server_manager import server_manager_instance

    client = backend.client()
    physical = client.describe_alias(backend.name)["collection_name"]
    client.flush(physical)
    _, db, _ = server_manager_instance._servers[os.path.abspath(backend.uri)]
    db.get_collection(physical)._wait_for_bg()


def milvus_row(
    vectors: np.ndarray, queries: np.ndarray, exact: list[list[int]], index_type: str
) -> list[Any]:
    """Insert into and search a Milvus Lite collection of ``index_type``."""
    from kb_assistant.vectorstore.manifest import Manifest
    from kb_assistant.vectorstore.milvus_index import MilvusBackend

    manifest = Manifest.new("bench", "random", vectors.shape[1], 0, 0)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "bench"
        folder.mkdir()
        backend = MilvusBackend(folder, manifest, index_type=index_type)
        try:
            started = time.perf_counter()
            backend.build(len(vectors), batches(vectors), lambda n: vectors[:n])
            wait_for_index(backend)
            insert = time.perf_counter() - started
            backend.save(None, 1)
        finally:
            backend.close()  # stops the in-process Milvus Lite server
        backend = MilvusBackend(folder, manifest, index_type=index_type)
        try:
            started = time.perf_counter()
            index, _ = backend.load()  # starts the server again and loads the segments
            index.search(queries[0], K)
            reopen = time.perf_counter() - started
            found, times = timed_searches(index, queries)
        finally:
            backend.close()
    speed = round(len(vectors) / insert)
    found_recall = round(recall(found, exact), 3)
    return [f"Milvus Lite {index_type}", speed, round(reopen, 2),
            percentile(times, 50), percentile(times, 95), found_recall]  # fmt: skip


def main() -> None:
    """Measure each store, print (and with ``--record``, append) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()  # other work on the machine skews every figure: say how much
    vectors, queries = data(args.n, args.dim, args.queries)
    faiss, exact = faiss_row(vectors, queries)
    rows = [
        ["store", "insert (vectors/s)", "reopen (s)", "search p50 (ms)", "search p95 (ms)",
         f"recall@{K}"],
        faiss,
        milvus_row(vectors, queries, exact, "FLAT"),
        milvus_row(vectors, queries, exact, "AUTOINDEX"),
    ]  # fmt: skip
    record_entry(
        f"Vector stores at {args.n:,} chunks ({args.dim} dimensions, k={K})",
        f"python -m bench.vector_stores --n {args.n} --dim {args.dim} --queries {args.queries}",
        rows,
        [
            f"Load average before the run: {load[0]:.2f}. Synthetic unit vectors in topics "
            f"of ~50; queries are stored vectors plus noise; AUTOINDEX searched with ef = "
            f"{milvus_index.SEARCH_EF}. Insert = through the knowledge base's own add (upserts "
            "of 2,000 rows for Milvus) until searchable; reopen = a fresh process's first "
            "search (Milvus Lite: start its in-process server and load the segments).",
        ],
        write=args.record,
    )


if __name__ == "__main__":
    main()
