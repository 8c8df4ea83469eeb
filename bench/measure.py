"""Shared by the benchmarks: run a command in a fresh process and measure it; name the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

# Runs in a middle process so that RUSAGE_CHILDREN is the measured command's peak RSS alone.
_PROBE = (
    "import json,resource,subprocess,sys,time;t=time.perf_counter();"
    "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
    "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(json.dumps({'rc':p.returncode,'out':p.stdout,'err':p.stderr[-2000:],"
    "'wall':time.perf_counter()-t,'rss_mb':r.ru_maxrss/1024,'cpu':r.ru_utime+r.ru_stime}))"
)


def measure(command: list[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Wall seconds (``wall``), CPU seconds (``cpu``), peak RSS (``rss_mb``), stdout (``out``).

    Exit codes 0 and 3 (kb: done, some files failed) count as success.
    """
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *command], env=env, cwd=cwd, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    if result["rc"] not in (0, 3):
        raise SystemExit(f"{command[:3]} failed: {result['err']}")
    return result


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation), rounded to 2 decimals."""
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 2)


def markdown_table(rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; the first row is the header."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(cell(v) for v in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def record_entry(
    title: str, command: str, rows: Sequence[Sequence[Any]], notes: Sequence[str] = (), *,
    write: bool = False,
) -> str:  # fmt: skip
    """Print a benchmark's table; with ``write``, append it to docs/benchmarks.md as well.

    The entry names the date, the machine and the command, so every figure can be rerun.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"### {title} — {stamp}", "", f"Machine: {machine()}  ", f"Command: `{command}`", "",
        markdown_table(rows), "", *[f"{n}\n" for n in notes],
    ])  # fmt: skip
    print(text)
    if write:
        with BENCHMARKS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text.rstrip() + "\n")
    return text
