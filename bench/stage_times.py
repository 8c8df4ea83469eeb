"""Where the time goes, and what this machine can do: the figures behind docs/performance.md.

1. The machine's ceilings: fp32 matrix multiply (numpy/OpenBLAS, all cores) in GFLOP/s and
   memory read bandwidth (all cores) in GB/s.
2. An ingest of the Debian Reference (PDF + HTML), stage by stage and each alone: reading
   (parse + split + keyword segmentation, one thread), embedding (ONNX int8), writing (SQLite,
   FTS5, FAISS); then the real pipelined ingest's wall time.
3. One question through ``kb ask``: retrieval, prompt processing and decoding from its trace,
   with the work each did (FLOPs per prompt token, bytes per decoded token).

Usage: python -m bench.stage_times   (needs debian-reference-en and debian-faq)
"""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import machine, markdown_table

FILES = [Path("/usr/share/debian-reference/debian-reference.en.pdf"),
         *map(Path, sorted(glob.glob("/usr/share/debian-reference/*.en.html")))]  # fmt: skip
GGUF_PARAMS = 134.5e6  # SmolLM2-135M


def ceilings() -> tuple[float, float]:
    """fp32 GEMM GFLOP/s and memory read GB/s using every core."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    started = time.perf_counter()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9
    cores = os.cpu_count() or 1
    parts = [np.ones(2**28 // cores, dtype=np.float32) for _ in range(cores)]  # 1 GiB in all

    def read(x: np.ndarray) -> None:
        for _ in range(5):
            x.sum()

    threads = [threading.Thread(target=read, args=(p,)) for p in parts]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bandwidth = 5 * 2**30 / (time.perf_counter() - started) / 1e9
    return gflops, bandwidth


def ingest_stages() -> list[list[Any]]:
    """Each stage alone over the corpus, then the pipelined ingest."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.loaders import LoadContext, load_sections
    from kb_assistant.loaders.splitter import ChunkSplitter
    from kb_assistant.settings import load_settings
    from kb_assistant.vectorstore.keywords import index_text

    home = Path(tempfile.mkdtemp(prefix="kb-profile-"))
    settings = load_settings(home)
    assistant = build_assistant(settings)
    embedder = assistant.embedder
    embedder.embed_array(["warm up"])
    splitter = ChunkSplitter(embedder.token_counter, settings.chunk_tokens, settings.chunk_overlap)
    started = time.perf_counter()
    chunks = [c for f in FILES for c in splitter.split_sections(load_sections(f, LoadContext()))]
    for c in chunks:
        index_text(c.embed_text)
    read_s = time.perf_counter() - started
    texts = [c.embed_text for c in chunks]
    tokens = sum(embedder.token_counter.count(texts))
    started = time.perf_counter()
    embedder.embed_array(texts)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    report = assistant.ingest(FILES, kb="pipelined")
    pipelined_s = time.perf_counter() - started
    # Reading + writing without the model: the same ingest with the hashing test embedder.
    fake = build_assistant(load_settings(home / "fake", embedding_backend="fake"))
    started = time.perf_counter()
    fake.ingest(FILES, kb="fake")
    cached_s = time.perf_counter() - started
    n = len(chunks)
    return [
        ["stage", "s", "chunks/s", "note"],
        ["read: parse + split + segment (1 thread)", round(read_s, 1), round(n / read_s),
         f"{n} chunks"],
        ["embed (ONNX int8, 2 threads)", round(embed_s, 1), round(n / embed_s),
         f"{tokens} tokens, {tokens / n:.0f} a chunk"],
        ["read + write, no model (hash embedder)", round(cached_s, 1), round(n / cached_s), ""],
        ["pipelined ingest (kb ingest)", round(pipelined_s, 1),
         round(report.chunks_added / pipelined_s), f"read + embed alone: {read_s + embed_s:.1f} s"],
    ]  # fmt: skip


def question() -> dict[str, Any]:
    """The trace of one cold question over the Debian FAQ."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="kb-profile-q-"))
    assistant = build_assistant(load_settings(home, seed=7, max_tokens=96, prompt_cache_mb=0))
    assistant.ingest(sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html")), kb="faq")
    assistant.ask("What is a Debian package?", kb="faq")  # loads the model
    engine = assistant.chat_model.engine  # type: ignore[attr-defined]
    engine._load().reset()
    return assistant.ask("How do I install a package with apt?", kb="faq").trace


def main() -> None:
    """Measure and print the tables."""
    gflops, bandwidth = ceilings()
    print(f"Machine: {machine()}\n")
    print(
        markdown_table(
            [
                ["ceiling", "measured"],
                ["fp32 GEMM (numpy, all cores)", f"{gflops:.0f} GFLOP/s"],
                ["memory read (all cores)", f"{bandwidth:.1f} GB/s"],
            ]
        )
    )
    print()
    print(markdown_table(ingest_stages()))
    trace = question()
    prompt_s = trace["time_to_first_token_s"]
    rate = trace["prompt_tokens"] / prompt_s
    print()
    print(markdown_table([
        ["step", "s", "rate", "work"],
        ["retrieval (embed query + hybrid search)", trace["retrieval_s"], "", ""],
        ["prompt processing", prompt_s, f"{rate:.0f} tok/s",
         f"{trace['prompt_tokens']} tokens x {2 * GGUF_PARAMS / 1e9:.2f} GFLOP = "
         f"{rate * 2 * GGUF_PARAMS / 1e9:.0f} GFLOP/s"],
        ["decoding", trace["total_s"] - trace["first_token_after_s"],
         f"{trace['tokens_per_s']} tok/s", f"{trace['completion_tokens']} tokens"],
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
