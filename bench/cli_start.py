"""CLI cold start: ``kb --help`` and the first ``kb search`` in a new process.

Each command runs in a fresh process, ``--reps`` times; the median wall time is reported. The
search runs over a knowledge base of the Debian FAQ (ingested first, not timed), so it pays for
opening the knowledge base, loading the ONNX model and embedding the query. It also checks that
no PyTorch module was imported on the way (``python -X importtime``).

Usage: python -m bench.cli_start [--reps 5] [--record]   (needs debian-faq)
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import measure, record_entry

ROOT = Path(__file__).resolve().parent.parent


def median_wall(command: list[str], env: dict[str, str], reps: int) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MB) of ``command`` over ``reps`` fresh processes."""
    runs = [measure(command, env, ROOT) for _ in range(reps)]
    return (statistics.median(r["wall"] for r in runs),
            statistics.median(r["rss_mb"] for r in runs))  # fmt: skip


def main() -> None:
    """Time the commands; print (and record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "KB_HOME": tempfile.mkdtemp(prefix="kb-start-")}
    kb = str(Path(sys.executable).with_name("kb"))
    subprocess.run([kb, "ingest", *sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html"))],
                   env=env, check=True, capture_output=True)  # fmt: skip
    question = "How do I install a package from unstable?"
    rows: list[list[Any]] = [["command", "median wall s", "peak RSS MB", "target"]]
    for command, target in (([kb, "--help"], "≤ 0.5 s"),
                            ([kb, "search", question], "≤ 3 s")):  # fmt: skip
        wall, rss = median_wall(command, env, args.reps)
        shown = " ".join(["kb", *(f"'{c}'" if " " in c else c for c in command[1:])])
        rows.append([f"`{shown}`", round(wall, 3), round(rss), target])
    command = [sys.executable, "-X", "importtime", "-m", "kb_assistant.cli", "search", question]
    traced = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    torch = [line for line in traced.stderr.splitlines() if line.rstrip().endswith(" torch")]
    record_entry(
        "CLI cold start", f"python -m bench.cli_start --reps {args.reps}", rows,
        [f"Each a fresh process, median of {args.reps}. The search: a knowledge base of the 17 "
         "Debian FAQ pages, default settings (ONNX int8 embeddings, hybrid retrieval). PyTorch "
         f"imported by `kb search`: {'yes' if torch else 'no'}."],
        write=args.record,
    )  # fmt: skip


if __name__ == "__main__":
    main()
