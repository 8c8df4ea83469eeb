"""Ingestion benchmark on real corpora; against the textbook LangChain pipeline side by side.

Corpora (Debian packages): ``debian-reference`` — the Debian Reference PDF + HTML
(``apt-get install debian-reference-en``), compared with the textbook pipeline in the same run;
``postgresql`` — the PostgreSQL 15 manual, 1,173 HTML pages (``postgresql-doc-15``), for scale
(the textbook pipeline too with ``--textbook``: it takes several minutes there).

Each pipeline runs in a fresh process (ours with a warm exported-model cache, so the one-time
ONNX export is not counted). Reported: files, pages, chunks, wall s, chunks/s, peak RSS, and
CPU use — CPU seconds over wall seconds and cores: how busy the pipeline kept the machine
(parsing and embedding overlap, so neither core should idle).

Usage: python -m bench.ingest_compare [--corpus debian-reference|postgresql] [--textbook]
       [--record]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import measure, record_entry

ROOT = Path(__file__).resolve().parent.parent
CORPORA = {
    "debian-reference": lambda: [
        "/usr/share/debian-reference/debian-reference.en.pdf",
        *sorted(glob.glob("/usr/share/debian-reference/*.en.html")),
    ],
    "postgresql": lambda: sorted(glob.glob("/usr/share/doc/postgresql-doc-15/html/*.html")),
}


def row(name: str, files: int, pages: int, chunks: int, run: dict[str, Any]) -> list[Any]:
    """One table row."""
    wall = float(run["wall"])
    busy = float(run["cpu"]) / wall / (os.cpu_count() or 1)
    return [name, files, pages, chunks, round(wall, 1), round(chunks / wall, 1),
            round(float(run["rss_mb"])), f"{busy:.0%}"]  # fmt: skip


def ours(files: list[str], env: dict[str, str]) -> list[Any]:
    """kb ingest in a fresh process."""
    kb = [sys.executable, "-m", "kb_assistant.cli"]
    warm = Path(env["KB_HOME"]) / "warm-up.txt"
    warm.write_text("A short text to load the embedding model once.\n", encoding="utf-8")
    subprocess.run([*kb, "ingest", str(warm), "--kb", "warm"], env=env, capture_output=True,
                   cwd=ROOT, check=True)  # fmt: skip
    run = measure([*kb, "ingest", *files, "--kb", "bench", "--json"], env, ROOT)
    report = json.loads(str(run["out"]))
    docs = json.loads(subprocess.run(
        [*kb, "docs", "--kb", "bench", "--json"], env=env, capture_output=True, text=True,
        cwd=ROOT, check=True,
    ).stdout)  # fmt: skip
    pages = sum(d["pages"] or 1 for d in docs)
    return row("kb-assistant", len(files), pages, report["chunks_added"], run)


def textbook(files: list[str], env: dict[str, str]) -> list[Any]:
    """The textbook LangChain pipeline (bench/textbook_pipeline.py) in a fresh process."""
    run = measure([sys.executable, str(ROOT / "bench/textbook_pipeline.py"), *files], env, ROOT)
    result = json.loads(str(run["out"]).strip().splitlines()[-1])
    return row("textbook LangChain", len(files), result["pages"], result["chunks"], run)


def main() -> None:
    """Run the pipelines and print (and optionally record) the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="debian-reference")
    parser.add_argument("--textbook", action="store_true", help="also on postgresql")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    files = CORPORA[args.corpus]()
    if not files or not all(Path(f).is_file() for f in files):
        raise SystemExit(f"corpus {args.corpus} is not installed; see this script's docstring")
    env = {**os.environ, "KB_HOME": tempfile.mkdtemp(prefix="kb-bench-")}
    rows = [ours(files, env)]
    if args.corpus == "debian-reference" or args.textbook:
        rows.append(textbook(files, env))
    from kb_assistant.settings import load_settings

    s = load_settings(Path(env["KB_HOME"]))
    notes = [f"kb-assistant: embedding_backend={s.embedding_backend} (int8: "
             f"{s.embedding_quantize}), chunks {s.chunk_tokens}/{s.chunk_overlap} tokens. Wall "
             "time includes process start and model load for both; CPU use = CPU s / wall s / "
             f"{os.cpu_count()} cores."]  # fmt: skip
    if len(rows) == 2:
        notes.append(f"Wall-time ratio kb-assistant / textbook: **{rows[0][4] / rows[1][4]:.2f}**")
    header = ["pipeline", "files", "pages", "chunks", "wall s", "chunks/s", "peak RSS MB",
              "CPU use"]  # fmt: skip
    record_entry(f"Ingestion, {args.corpus}", f"python -m bench.ingest_compare --corpus "
                 f"{args.corpus}{' --textbook' if args.textbook else ''}", [header, *rows], notes,
                 write=args.record)  # fmt: skip


if __name__ == "__main__":
    main()
