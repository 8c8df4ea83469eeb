"""The Streamlit app's pages and helpers (the only package that imports Streamlit).

``app.py`` is the entry point; ``ui.shell`` draws the sidebar and the navigation; one module
per page under ``ui/pages``. Everything the pages do goes through ``assistant.Assistant``.
"""
