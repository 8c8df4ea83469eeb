"""How kb-assistant starts its own child processes: isolated, by the installed module's name.

Python puts the current folder first on ``sys.path`` for ``python -m`` and ``python -c``, so a
child started that way from a folder holding ``loaders/sandbox.py`` or ``settings.py`` would run
the user's file instead of ours. ``-P`` leaves the current folder out and ``-E`` every
``PYTHON*`` variable (``PYTHONPATH`` among them); the child imports only the installed
``kb_assistant``. Unlike ``-I``, this keeps the user's own site-packages, where
``pip install --user`` puts kb-assistant.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
ISOLATED = ("-E", "-P")  # no PYTHON* variables, nothing from the current folder


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args…`` isolated, with this interpreter."""
    return [sys.executable, *ISOLATED, "-m", module, *args]


def python_code(code: str, *args: str) -> list[str]:
    """The command line that runs ``python -c code args…`` isolated, with this interpreter."""
    return [sys.executable, *ISOLATED, "-c", code, *args]


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Ask a child to end (SIGTERM), and kill it if it has not ended after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
