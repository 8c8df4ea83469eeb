"""Peak memory and time to ingest one very large text file (streaming check).

Writes a text file of SIZE_MB (English and Chinese paragraphs), ingests it into a fresh
knowledge base in a child process, and prints size, chunks, seconds and the child's peak RSS.
``--backend fake`` isolates the pipeline's own memory from the model's (and takes a minute
instead of 40 at 200 MB); ``--backend onnx`` is the default embedder.

Usage: python -m bench.large_text [--mb 200] [--backend fake|onnx] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.measure import measure, record_entry

ROOT = Path(__file__).resolve().parent.parent
PARAGRAPH = (
    "Section {i}. The package manager resolves dependencies before it installs anything; "
    "a held package stays at its version until released. 第{i}节：知识库在本地运行，"
    "文件不会离开这台电脑。每个段落都会被切分并编入索引。\n\n"
)


def main() -> None:
    """Generate, ingest, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--backend", default="fake")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    size_mb = args.mb
    work = Path(tempfile.mkdtemp(prefix="kb-large-"))
    path = work / "large.txt"
    with path.open("w", encoding="utf-8") as fh:
        i = 0
        while fh.tell() < size_mb * 2**20:
            fh.write("".join(PARAGRAPH.format(i=i + j) for j in range(1000)))
            i += 1000
    env = {**os.environ, "KB_HOME": str(work / "home"), "KB_EMBEDDING_BACKEND": args.backend}
    # First, outside the measurement, a small file into another knowledge base: the model's
    # one-time ONNX export (a child process with PyTorch) happens there.
    warm = work / "warm.txt"
    warm.write_text(PARAGRAPH.format(i=0), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "kb_assistant.cli", "ingest", str(warm), "--kb", "warm"],
                   env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    command = [sys.executable, "-m", "kb_assistant.cli", "ingest", str(path), "--json"]
    result = measure(command, env, ROOT)
    report = json.loads(result["out"])
    rows = [["file MB", "embeddings", "chunks", "wall s", "chunks/s", "peak RSS MB"],
            [round(path.stat().st_size / 2**20), args.backend, report["chunks_added"],
             round(result["wall"], 1), round(report["chunks_added"] / result["wall"]),
             round(result["rss_mb"])]]  # fmt: skip
    record_entry("One large text file", f"python -m bench.large_text --mb {size_mb} "
                 f"--backend {args.backend}", rows,
                 ["Streamed in sections of 256 K characters; chunks are written inside the "
                  "document's transaction as they are embedded; target peak RSS <= 1.5 GB. "
                  "The model's one-time ONNX export is done before the measurement."],
                 write=args.record)  # fmt: skip
    path.unlink()


if __name__ == "__main__":
    main()
