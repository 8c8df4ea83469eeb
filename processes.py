"""How kb-assistant starts its own child processes: isolated, by the installed module's name.

Python puts the current folder first on ``sys.path`` for ``python -m`` and ``python -c``, so a
child started that way from a folder holding ``loaders/sandbox.py`` or ``settings.py`` would run
the user's file instead of ours. ``-I`` (isolated mode) leaves the current folder and every
``PYTHON*`` variable out; the child imports only the installed ``kb_assistant``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args…`` isolated, with this interpreter."""
    return [sys.executable, "-I", "-m", module, *args]


def python_code(code: str, *args: str) -> list[str]:
    """The command line that runs ``python -c code args…`` isolated, with this interpreter."""
    return [sys.executable, "-I", "-c", code, *args]
