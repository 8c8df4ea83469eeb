"""Ingestion benchmark: kb-assistant vs the textbook LangChain pipeline, side by side.

Runs both on the same files in one invocation (each in a fresh process, ours first with a warm
model cache) and prints a Markdown table; ``--record`` appends it to docs/benchmarks.md with the
machine and the command. Default files: the Debian Reference PDF + HTML
(``apt-get install debian-reference-en``).

Usage: python bench/ingest_compare.py [FILE...] [--record]
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from measure import machine, measure

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [
    "/usr/share/debian-reference/debian-reference.en.pdf",
    *sorted(glob.glob("/usr/share/debian-reference/*.en.html")),
]


def main(argv: list[str]) -> None:
    """Run both pipelines and print (and optionally record) the comparison."""
    record = "--record" in argv
    files = [a for a in argv if a != "--record"] or DEFAULT_FILES
    env = dict(os.environ)
    home = tempfile.mkdtemp(prefix="kb-bench-")
    env["KB_HOME"] = home
    kb = [sys.executable, "-m", "cli"]
    # Warm the exported-model cache so the one-time ONNX export is not counted as ingest.
    warm = Path(home) / "warm-up.txt"
    warm.write_text("A short text to load the embedding model once.\n", encoding="utf-8")
    subprocess.run(
        [*kb, "ingest", str(warm), "--kb", "warm"],
        env=env,
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    ours = measure([*kb, "ingest", *files, "--kb", "bench", "--json"], env, ROOT)
    report = json.loads(str(ours["out"]))
    docs = json.loads(
        subprocess.run(
            [*kb, "docs", "--kb", "bench", "--json"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
    )
    pages = sum(d["pages"] or 1 for d in docs)
    textbook = measure(
        [sys.executable, str(ROOT / "bench/textbook_pipeline.py"), *files], env, ROOT
    )
    tb = json.loads(str(textbook["out"]).strip().splitlines()[-1])
    rows = [
        (
            "kb-assistant",
            len(files),
            pages,
            report["chunks_added"],
            float(ours["wall"]),
            float(ours["rss_mb"]),
        ),
        (
            "textbook LangChain",
            len(files),
            tb["pages"],
            tb["chunks"],
            float(textbook["wall"]),
            float(textbook["rss_mb"]),
        ),
    ]
    lines = [
        "| pipeline | files | pages | chunks | wall s | chunks/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {n} | {f} | {p} | {c} | {w:.1f} | {c / w:.1f} | {r:.0f} |"
            for n, f, p, c, w, r in rows
        ),
        "",
        f"Wall-time ratio kb-assistant / textbook: **{rows[0][4] / rows[1][4]:.2f}**",
    ]
    table = "\n".join(lines)
    print(table)
    if record:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        sys.path.insert(0, str(ROOT))
        from settings import load_settings

        s = load_settings(home)
        backend = f"{s.embedding_backend} (quantize={s.embedding_quantize})"
        entry = (
            f"\n### Ingestion, Debian Reference (PDF + HTML) — {stamp}\n\n"
            f"Machine: {machine()}  \nCommand: `python bench/ingest_compare.py --record`  \n"
            f"kb-assistant settings: embedding_backend={backend}, "
            f"chunk {s.chunk_tokens}/{s.chunk_overlap} tokens; wall time includes process start "
            "and model load for both.\n\n"
            f"{table}\n"
        )
        with (ROOT / "docs/benchmarks.md").open("a", encoding="utf-8") as fh:
            fh.write(entry)


if __name__ == "__main__":
    main(sys.argv[1:])
