"""The Streamlit app: ``streamlit run app.py`` (or ``kb app``, which binds 127.0.0.1 only).

A thin entry point: the pages live in ``ui/`` and everything they do goes through
``assistant.Assistant``.
"""

import os
import sys

# Streamlit puts this script's folder, the package itself, first on sys.path: its modules
# (models, eval, settings...) would shadow installed packages of those names. Take it out.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from kb_assistant.ui.shell import run  # noqa: E402

run()
