"""Retrieval quality of a configuration, on a FAQ, from a fresh knowledge base.

``kb eval retrieval`` scores an existing knowledge base; this script is for comparing settings
(backends, chunk sizes, retrieval modes): it ingests the FAQ's HTML files into a fresh home with
the overrides given, runs the same evaluation, writes the run file, and prints one JSON line.

Usage:
    python eval/faq_retrieval.py QA.jsonl RUN.jsonl HTML_FILE... [--home DIR] [--set KEY=VALUE]

``--set`` overrides a setting (e.g. ``--set embedding_backend=sentence-transformers``).
Build QA.jsonl with ../shared/eval/build_faq_qa.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    """Run the evaluation and print one JSON line."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.eval.questions import read_questions
    from kb_assistant.eval.retrieval import evaluate_retrieval
    from kb_assistant.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("qa", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    home = args.home or Path(tempfile.mkdtemp(prefix="kb-eval-"))
    assistant = build_assistant(load_settings(home, **overrides))
    started = time.perf_counter()
    report = assistant.ingest(args.files, kb="faq-eval")
    ingest_s = time.perf_counter() - started
    questions = read_questions(args.qa, ("id", "question", "gold_text"))
    result = evaluate_retrieval(
        lambda q, k: assistant.search(q, k=k, kb="faq-eval"), questions, k=10
    )
    with args.run.open("w", encoding="utf-8") as fh:
        for line in result.run_lines():
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    scores = result.scores
    settings = assistant.settings
    print(json.dumps({
        **scores, "chunks": report.chunks_added, "ingest_s": round(ingest_s, 2),
        "backend": settings.embedding_backend,
        "quantize": settings.embedding_quantize, "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
