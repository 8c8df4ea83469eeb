"""What every page gets: the shared Assistant, the chosen knowledge base, the UI language.

The Assistant (with its one chat model and one embedding model) is a server-wide resource:
every browser tab uses the same one, so the model is loaded once and its calls queue. When the
saved settings change, the next run builds a new Assistant from them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from kb_assistant.assistant import Assistant
from kb_assistant.settings import Settings, load_settings
from kb_assistant.ui.i18n import Text
from kb_assistant.ui.jobs import JobBoard

Build = Callable[[Settings], Assistant]


@st.cache_resource(max_entries=1, show_spinner=False)
def _shared_assistant(home: str, fingerprint: str, _build: Build) -> Assistant:
    """One Assistant per data directory and settings (the previous one is dropped)."""
    return _build(load_settings(home))


@st.cache_resource(show_spinner=False)
def job_board(home: str) -> JobBoard:
    """The background ingests of this server process."""
    return JobBoard()


def shared_assistant(settings: Settings, build: Build) -> Assistant:
    """The Assistant for the current settings."""
    return _shared_assistant(str(settings.home), settings.model_dump_json(), build)


@dataclass
class PageContext:
    """Handed to every page."""

    assistant: Assistant
    settings: Settings
    kb: str
    t: Text
    jobs: JobBoard


_local = threading.local()  # each browser session's script runs in its own thread


def set_context(ctx: PageContext) -> None:
    """Hand ``ctx`` to the page about to run in this script thread."""
    _local.ctx = ctx


def current_context() -> PageContext:
    """The context the shell set for this run."""
    ctx: PageContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        raise RuntimeError("pages run through app.py (streamlit run app.py)")
    return ctx
