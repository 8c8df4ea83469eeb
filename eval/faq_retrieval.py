"""Retrieval quality on a FAQ question set, scored exactly as ../shared/eval/score_retrieval.py.

Ingests the FAQ's HTML files into a fresh knowledge base, asks every question through the same
search ``kb search`` uses, writes the run file, and prints recall@1, recall@5, MRR@10.

Usage:
    python eval/faq_retrieval.py QA.jsonl RUN.jsonl HTML_FILE... [--home DIR] [--set KEY=VALUE]

``--set`` overrides a setting (e.g. ``--set embedding_backend=sentence-transformers``).
Build QA.jsonl with ../shared/eval/build_faq_qa.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _scorer(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("score_retrieval", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Run the evaluation and print one JSON line."""
    from assistant import build_assistant
    from settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("qa", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--scorer", type=Path, default=ROOT.parent / "shared/eval/score_retrieval.py"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    home = args.home or Path(tempfile.mkdtemp(prefix="kb-eval-"))
    assistant = build_assistant(load_settings(home, **overrides))
    started = time.perf_counter()
    report = assistant.ingest(args.files, kb="faq-eval")
    ingest_s = time.perf_counter() - started
    questions = [json.loads(line) for line in args.qa.open(encoding="utf-8")]
    started = time.perf_counter()
    with args.run.open("w", encoding="utf-8") as fh:
        for q in questions:
            hits = assistant.search(q["question"], k=10, kb="faq-eval")
            fh.write(json.dumps({"id": q["id"], "retrieved": [h.chunk.text for h in hits]}) + "\n")
    query_ms = 1000 * (time.perf_counter() - started) / max(1, len(questions))
    scores = _scorer(args.scorer).score(str(args.qa), str(args.run))
    settings = assistant.settings
    print(json.dumps({
        **scores, "chunks": report.chunks_added, "ingest_s": round(ingest_s, 2),
        "query_ms": round(query_ms, 1), "backend": settings.embedding_backend,
        "quantize": settings.embedding_quantize, "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
