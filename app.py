"""The Streamlit app: ``streamlit run app.py`` (or ``kb app``, which binds 127.0.0.1 only).

A thin entry point: the pages live in ``ui/`` and everything they do goes through
``assistant.Assistant``.
"""

from kb_assistant.ui.shell import run

run()
