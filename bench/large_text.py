"""Peak memory and time to ingest one very large text file (streaming check).

Writes a text file of SIZE_MB (English and Chinese paragraphs), ingests it into a fresh
knowledge base in a child process, and prints size, chunks, seconds and the child's peak RSS.
``KB_EMBEDDING_BACKEND=fake`` isolates the pipeline's own memory from the model's.

Usage: python bench/large_text.py [SIZE_MB]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from measure import measure

ROOT = Path(__file__).resolve().parent.parent
PARAGRAPH = (
    "Section {i}. The package manager resolves dependencies before it installs anything; "
    "a held package stays at its version until released. 第{i}节：知识库在本地运行，"
    "文件不会离开这台电脑。每个段落都会被切分并编入索引。\n\n"
)


def main(size_mb: int) -> None:
    """Generate, ingest, report."""
    work = Path(tempfile.mkdtemp(prefix="kb-large-"))
    path = work / "large.txt"
    with path.open("w", encoding="utf-8") as fh:
        i = 0
        while fh.tell() < size_mb * 2**20:
            fh.write("".join(PARAGRAPH.format(i=i + j) for j in range(1000)))
            i += 1000
    env = {**os.environ, "KB_HOME": str(work / "home")}
    command = [sys.executable, "-m", "cli", "ingest", str(path), "--json"]
    result = measure(command, env, ROOT)
    report = json.loads(result["out"])
    print(json.dumps({
        "file_mb": round(path.stat().st_size / 2**20), "chunks": report["chunks_added"],
        "seconds": round(result["wall"], 1), "peak_rss_mb": round(result["rss_mb"]),
        "backend": os.environ.get("KB_EMBEDDING_BACKEND", "onnx"),
    }))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
