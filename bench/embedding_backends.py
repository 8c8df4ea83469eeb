"""Embedding throughput and retrieval quality of each backend, side by side.

Passages: N chunks of the Debian Reference HTML cut by our splitter (real lengths), batch 32,
the configured threads. Each backend embeds them once to warm up, then again timed: chunks/s,
ratio to sentence-transformers on PyTorch, mean and minimum cosine to PyTorch's vectors, the
process's peak RSS so far. Then, per backend, the Debian FAQ is ingested into a fresh knowledge
base and its 117 questions scored (``kb eval retrieval``'s scoring): MRR@10 and its difference
from PyTorch's.

Usage: python -m bench.embedding_backends [--passages N] [--record]
(needs debian-reference-en and debian-faq)
"""

from __future__ import annotations

import argparse
import glob
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import record_entry

ROOT = Path(__file__).resolve().parent.parent

from kb_assistant.loaders import LoadContext, load_sections  # noqa: E402
from kb_assistant.loaders.splitter import ChunkSplitter  # noqa: E402
from kb_assistant.models.factory import build_embedder  # noqa: E402
from kb_assistant.settings import load_settings  # noqa: E402


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


BACKENDS = (
    ("sentence-transformers (PyTorch)", {"embedding_backend": "sentence-transformers"}),
    ("onnx fp32", {"embedding_backend": "onnx", "embedding_quantize": False}),
    ("onnx int8 (default)", {"embedding_backend": "onnx", "embedding_quantize": True}),
)
FAQ = sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html"))


def faq_mrr(overrides: dict[str, Any], cache: Path) -> float:
    """MRR@10 of the Debian FAQ questions over a fresh knowledge base of the FAQ."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.eval.questions import read_questions
    from kb_assistant.eval.retrieval import evaluate_retrieval

    home = Path(tempfile.mkdtemp(prefix="kb-emb-faq-"))
    qa = home / "faq.jsonl"
    subprocess.run([sys.executable, str(ROOT.parent / "shared/eval/build_faq_qa.py"), str(qa),
                    *FAQ], check=True, capture_output=True)  # fmt: skip
    assistant = build_assistant(load_settings(home, model_cache=cache, **overrides))
    assistant.ingest([Path(f) for f in FAQ], kb="faq")
    questions = read_questions(qa, ("id", "question", "gold_text"))
    result = evaluate_retrieval(lambda q, k: assistant.search(q, k=k, kb="faq"), questions)
    assistant.close()
    return result.scores["mrr@10"]


def main() -> None:
    """Time each backend, score it on the FAQ, print (and record) a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    texts = passages(args.passages)
    home = Path(tempfile.mkdtemp(prefix="kb-emb-bench-"))
    rows = []
    reference = None
    for label, overrides in BACKENDS:
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
    mrr = [faq_mrr(overrides, home / "models") for _, overrides in BACKENDS] if FAQ else []
    header = ["backend", "chunks/s", "vs PyTorch", "mean cos", "min cos", "peak RSS MB so far"]
    header += ["FAQ MRR@10", "vs PyTorch"] if mrr else []
    table: list[list[Any]] = [header]
    for i, (label, rate, mean, low, rss) in enumerate(rows):
        quality: list[Any] = [mrr[i], f"{mrr[i] - mrr[0]:+.4f}"] if mrr else []
        table.append([label, round(rate, 1), f"{rate / base:.2f}x", f"{mean:.4f}", f"{low:.4f}",
                      round(rss), *quality])  # fmt: skip
    chars = np.mean([len(t) for t in texts])
    record_entry(
        "Embedding backends", f"python -m bench.embedding_backends --passages {args.passages}",
        table, [f"{len(texts)} passages of the Debian Reference, mean {chars:.0f} characters, "
                "batch 32; cos = cosine to PyTorch's vector of the same passage."],
        write=args.record,
    )  # fmt: skip


if __name__ == "__main__":
    main()
