"""Ingest throughput of the local engine and of the Ray engine on one and two nodes.

Corpus: the Debian Reference HTML (``apt-get install debian-reference-en``), embedded with the
real default model (multilingual-e5-small, ONNX int8; the exported model is warmed first so
the one-time export is not counted). Each ``kb ingest`` runs in a fresh process in a fresh
``KB_HOME``:

- local: ``kb ingest`` (reader threads + embedding in one process);
- ray, 1 node: a head started with ``--num-cpus 2``, then ``kb ingest --engine ray``;
- ray, 2 nodes: a head and a worker node with ``--num-cpus 1`` each (the same two cores).

The Ray catalogs are compared with the local one (documents, chunks, chunk texts in order).
Then the writer alone: the local run's chunks and vectors committed again into an empty
knowledge base through ``KnowledgeBaseWriter`` (catalog + keyword index + FAISS), one
transaction per document, so that ``w`` (chunks/s the single writer can take) is known.

Usage: python -m bench.ray_ingest [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import measure, record_entry

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
KB = [sys.executable, "-m", "kb_assistant.cli"]
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def corpus() -> list[str]:
    """The Debian Reference chapters (HTML)."""
    files = sorted(glob.glob("/usr/share/debian-reference/*.en.html"))
    if not files:
        raise SystemExit("install the corpus first: apt-get install -y debian-reference-en")
    return files


def base_env(home: Path) -> dict[str, str]:
    """This shell's environment without KB_* settings: the defaults (e5 on ONNX) apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    return {**env, **RAY_ENV, "KB_HOME": str(home)}


@contextlib.contextmanager
def ray_cluster(cpus_per_node: list[int]) -> Iterator[tuple[str, float]]:
    """A Ray cluster on this machine, one node per entry; yields (address, seconds to start).
    Its processes are killed by id afterwards (never ``ray stop``: other clusters may run)."""
    import psutil

    temp = tempfile.mkdtemp(prefix="kbray", dir="/tmp")  # Ray's socket paths must stay short
    with_port = _free_port()
    env = {**os.environ, **RAY_ENV}
    started = time.perf_counter()
    try:
        for i, cpus in enumerate(cpus_per_node):
            head = ["--head", "--port", str(with_port), "--include-dashboard=false", "--temp-dir",
                    temp]  # fmt: skip
            where = head if i == 0 else ["--address", f"127.0.0.1:{with_port}"]
            subprocess.run(
                [str(RAY), "start", "--num-cpus", str(cpus), "--disable-usage-stats", *where],
                env=env, check=True, capture_output=True, timeout=180,
            )  # fmt: skip
        yield f"127.0.0.1:{with_port}", time.perf_counter() - started
    finally:
        mine = [
            p for p in psutil.process_iter(["cmdline"])
            if any(temp in a or a.endswith(f":{with_port}") for a in p.info["cmdline"] or [])
        ]  # fmt: skip
        for process in mine + [c for p in mine for c in _children(p)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _children(process: Any) -> list[Any]:
    import psutil

    try:
        return list(process.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingest(files: list[str], env: dict[str, str], kb: str, *extra: str) -> dict[str, Any]:
    """``kb ingest`` in a fresh process: the measurement and its JSON report."""
    run = measure([*KB, "ingest", *files, "--kb", kb, "--json", *extra], env, cwd=ROOT)
    run["report"] = json.loads(run["out"])
    return run


def catalog(home: Path, kb: str) -> tuple[int, list[tuple[str, int, str]]]:
    """(documents, [(source, ordinal, text)]) of a knowledge base."""
    with sqlite3.connect(home / "kbs" / kb / "catalog.sqlite") as db:
        docs = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        chunks = db.execute(
            "SELECT d.source, c.ordinal, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "ORDER BY d.source, c.ordinal"
        ).fetchall()
    return int(docs), chunks


def writer_rate(home: Path, source_kb: str, copies: int = 20) -> tuple[int, int, float]:
    """Documents, chunks, and seconds to commit them with ready vectors (the single writer
    alone, closing included): the local run's documents written ``copies`` times under other
    sources, so that the timing is not a few milliseconds."""
    import numpy as np

    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings
    from kb_assistant.vectorstore import NewChunk
    from kb_assistant.vectorstore.keywords import index_text

    with sqlite3.connect(home / "kbs" / source_kb / "catalog.sqlite") as db:
        docs = db.execute("SELECT id, source, name, sha256, size, format FROM documents").fetchall()
        rows = {
            d[0]: db.execute(
                "SELECT ordinal, text, page, heading, sheet, tokens, text_hash, embedding "
                "FROM chunks WHERE doc_id = ? ORDER BY ordinal", (d[0],),
            ).fetchall()
            for d in docs
        }  # fmt: skip
    ready = {  # keyword tokens are made by the readers (workers), not by the writer
        doc_id: (
            [NewChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], index_text(r[1])) for r in chunks],
            np.vstack([np.frombuffer(r[7], dtype=np.float32) for r in chunks]),
        )
        for doc_id, chunks in rows.items()
    }
    assistant = build_assistant(load_settings(home))
    try:
        assistant.create_kb("writer")
        base = assistant.knowledge_base("writer")
        started = time.perf_counter()
        with base.writer() as writer:
            for copy in range(copies):
                for doc_id, source, name, sha, size, fmt in docs:
                    writer.begin_document(f"{source}#{copy}", name, sha, size, fmt)
                    chunks, vectors = ready[doc_id]
                    writer.add_chunks(chunks, vectors)
                    writer.commit_document(None, [])
        seconds = time.perf_counter() - started
    finally:
        assistant.close()
    return len(docs) * copies, sum(len(c) for c, _ in ready.values()) * copies, seconds


def runs(files: list[str], env: dict[str, str], kb: str, repeat: int, *extra: str) -> Row:
    """``repeat`` ingests of the corpus (each into a new knowledge base) and, first, one of a
    tiny file: the fixed cost of the engine."""
    tiny = Path(env["KB_HOME"]) / "warm.txt"
    fixed = float(ingest([str(tiny)], env, f"tiny-{kb}", *extra)["wall"])
    done = [ingest(files, env, f"{kb}-{i}" if i else kb, *extra) for i in range(repeat)]
    return Row(done, fixed)


class Row:
    """The runs of one engine."""

    def __init__(self, done: list[dict[str, Any]], fixed: float, started: float = 0.0) -> None:
        self.done, self.fixed, self.started = done, fixed, started

    def cells(self, label: str) -> list[Any]:
        report = self.done[0]["report"]
        walls = sorted(float(r["wall"]) for r in self.done)
        wall = statistics.median(walls)
        n_files = len(report["added"]) + len(report["updated"])
        added = report["chunks_added"]
        return [label, n_files, added, round(wall, 1), f"{walls[0]:.1f}-{walls[-1]:.1f}",
                round(added / wall, 1), round(n_files / wall, 2), round(self.fixed, 1),
                round(added / (wall - self.fixed), 1),
                round(self.started, 1) if self.started else "-",
                round(max(float(r["rss_mb"]) for r in self.done))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each engine (median)")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    files = corpus()
    load = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="kb-ray-bench-"))
    env = base_env(home)
    try:
        warm = home / "warm.txt"
        warm.write_text("Warm the exported embedding model once.")
        ingest([str(warm)], env, "warm")  # the one-time ONNX export is not measured
        rows = {"local": runs(files, env, "local", args.repeat)}
        for label, nodes, kb in (("ray, 1 node x 2 CPUs", [2], "ray1"),
                                 ("ray, 2 nodes x 1 CPU", [1, 1], "ray2")):  # fmt: skip
            with ray_cluster(nodes) as (address, start_s):
                on_ray = ("--engine", "ray", "--ray-address", address)
                rows[label] = runs(files, env, kb, args.repeat, *on_ray)
                rows[label].started = start_s
        expected = catalog(home, "local")
        same = {kb: catalog(home, kb) == expected for kb in ("ray1", "ray2")}
        written, chunks, write_s = writer_rate(home, "local")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    table: list[list[Any]] = [["engine", "files", "chunks", "wall s (median)", "range",
                               "chunks/s", "files/s", "fixed cost s", "chunks/s past it",
                               "cluster start s", "peak RSS MB (driver)"]]  # fmt: skip
    table += [row.cells(label) for label, row in rows.items()]
    notes = [
        f"{args.repeat} runs of each engine; rates from the median wall time.",
        f"Catalog equal to the local one (documents, chunks, chunk texts in order): {same}.",
        f"Writer alone (catalog + keyword index + FAISS, one transaction per document, ready "
        f"vectors; the corpus written 20 times): {written} documents, {chunks} chunks in "
        f"{write_s:.2f} s = **{chunks / write_s:.0f} chunks/s, {written / write_s:.0f} "
        "documents/s**.",
        "Fixed cost = wall time of one tiny file through the same engine (process start, model "
        "load; on Ray also connecting and starting the workers, which load the model each).",
        f"Load average before the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + ".",
    ]
    record_entry("Ingestion on Ray, Debian Reference HTML", "python -m bench.ray_ingest",
                 table, notes, write=args.record)  # fmt: skip


if __name__ == "__main__":
    main()
