"""How fast hostile files are refused: each built for real, then ``kb ingest`` in a fresh
process (the worker, its checks and limits included).

Usage: python -m bench.hostile_files [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.measure import measure, record_entry
from tests.files import deflate_bomb, make_docx, make_raw_pdf, make_zip

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path) -> dict[str, Path]:
    """The hostile files of hardening items 6 and 9."""
    pdf = make_raw_pdf(folder / "bomb.pdf", b"", compressed=deflate_bomb(300 << 20))
    docx = make_docx(folder / "plain.docx", [("p", "hello")])
    with zipfile.ZipFile(docx) as source:
        entries = {i.filename: source.read(i) for i in source.infolist()}
    text_bomb = make_zip(folder / "textbomb.docx", {k: v for k, v in entries.items()
                                                     if k != "word/document.xml"})  # fmt: skip
    with (
        zipfile.ZipFile(text_bomb, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("word/document.xml", "w") as part,
    ):
        block = b"<w:t>" + b"a" * (1 << 20) + b"</w:t>"
        for _ in range(300):
            part.write(block)
    many = make_zip(folder / "many.xlsx", {f"xl/p{i}.bin": b"" for i in range(10_001)})
    return {"PDF bomb (300 MB inflated)": pdf, "DOCX text bomb (300 MB)": text_bomb,
            "XLSX with 10,001 entries": many}  # fmt: skip


def main() -> None:
    """Build, ingest each alone, print (and record) the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rows: list[list[object]] = [
        ["file", "size (KB)", "kb ingest wall (s)", "peak RSS (MB)", "reason"]
    ]
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        env = {**os.environ, "KB_HOME": str(folder / "home"), "KB_EMBEDDING_BACKEND": "fake"}
        for title, path in build(folder).items():
            result = measure(
                [sys.executable, "-m", "kb_assistant.cli", "ingest", str(path), "--json"], env, ROOT
            )
            reason = "decompression limit" if "decompression limit" in result["out"] else "?"
            rows.append([title, round(path.stat().st_size / 1024), round(result["wall"], 2),
                         round(result["rss_mb"]), reason])  # fmt: skip
    record_entry(
        "Hostile files refused", "python -m bench.hostile_files", rows,
        ["Wall time of the whole `kb ingest` process (Python start, worker start, the check). "
         "Target: refused in under 2 s."],
        write=args.record,
    )  # fmt: skip


if __name__ == "__main__":
    main()
