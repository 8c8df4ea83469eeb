"""The ``kb`` command: a thin client of ``assistant.Assistant``.

Exit codes: 0 success; 1 an error (message on stderr, and ``{"error": ...}`` on stdout with
``--json``); 2 a usage error; 3 ``ingest`` finished but some files failed; 130 interrupted.
Each module registers its commands on ``main`` when imported.
"""

from kb_assistant.cli import admin, answers, documents, evaluate, graph, models, serve, tables  # noqa: F401  (register the commands)
from kb_assistant.cli.base import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PARTIAL, main

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PARTIAL", "main"]
