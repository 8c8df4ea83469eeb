"""kb-assistant, installed as the one import package ``kb_assistant``.

The repository's top level is this package's folder (``pyproject.toml`` maps ``kb_assistant`` to
``.``), so the tree shows the design card (``app.py``, ``chains/``, ``loaders/``, ``models/``…)
while the installed names never clash with other distributions (``models``, ``eval``,
``settings``…). Import it as ``kb_assistant.<module>``; nothing imports a bare top-level name.
Nothing happens at import time.
"""
