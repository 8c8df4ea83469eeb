"""Shared by the benchmarks: run a command in a fresh process and measure it; name the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# Runs in a middle process so that RUSAGE_CHILDREN is the measured command's peak RSS alone.
_PROBE = (
    "import json,resource,subprocess,sys,time;t=time.perf_counter();"
    "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
    "print(json.dumps({'rc':p.returncode,'out':p.stdout,'err':p.stderr[-2000:],"
    "'wall':time.perf_counter()-t,"
    "'rss_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
)


def measure(command: list[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Wall seconds (``wall``), peak RSS (``rss_mb``), stdout (``out``) of ``command``.

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
