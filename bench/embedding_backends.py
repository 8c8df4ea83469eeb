"""Embedding throughput of each backend, side by side, on the same passages.

Passages: N chunks of the Debian Reference HTML cut by our splitter (real lengths). Each backend
embeds them once to warm up, then again timed. Prints chunks/s, ratio to PyTorch, the mean and
minimum cosine to PyTorch's vectors, and the process's peak RSS so far.

Usage: python bench/embedding_backends.py [N]   (needs debian-reference-en)
"""

from __future__ import annotations

import glob
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loaders import LoadContext, load_sections
from loaders.splitter import ChunkSplitter
from models.embeddings import build_embedder
from settings import load_settings


def passages(n: int) -> list[str]:
    """The first ``n`` chunks of the Debian Reference HTML, as ingest would embed them."""
    home = Path(tempfile.mkdtemp(prefix="kb-emb-bench-"))
    counter = build_embedder(load_settings(home, embedding_backend="onnx")).token_counter
    settings = load_settings(home)
    splitter = ChunkSplitter(counter, settings.chunk_tokens, settings.chunk_overlap)
    out: list[str] = []
    for name in sorted(glob.glob("/usr/share/debian-reference/ch*.en.html")):
        sections = load_sections(Path(name), LoadContext())
        out.extend(c.embed_text for c in splitter.split_sections(sections))
        if len(out) >= n:
            break
    return out[:n]


def main(n: int) -> None:
    """Time each backend and print a Markdown table."""
    texts = passages(n)
    home = Path(tempfile.mkdtemp(prefix="kb-emb-bench-"))
    rows = []
    reference = None
    for label, overrides in (
        ("sentence-transformers (PyTorch)", {"embedding_backend": "sentence-transformers"}),
        ("onnx fp32", {"embedding_backend": "onnx", "embedding_quantize": False}),
        ("onnx int8 (default)", {"embedding_backend": "onnx", "embedding_quantize": True}),
    ):
        embedder = build_embedder(load_settings(home, **overrides))
        embedder.embed_array(texts[:64])
        started = time.perf_counter()
        vectors = embedder.embed_array(texts)
        rate = len(texts) / (time.perf_counter() - started)
        reference = vectors if reference is None else reference
        cosine = np.sum(vectors * reference, axis=1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((label, rate, float(cosine.mean()), float(cosine.min()), rss))
    base = rows[0][1]
    print(f"{len(texts)} passages, mean {np.mean([len(t) for t in texts]):.0f} characters\n")
    print("| backend | chunks/s | vs PyTorch | mean cos | min cos | peak RSS MB so far |")
    print("|---|---|---|---|---|---|")
    for label, rate, mean, low, rss in rows:
        print(f"| {label} | {rate:.1f} | {rate / base:.2f}x | {mean:.4f} | {low:.4f} | {rss:.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
