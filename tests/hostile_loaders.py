"""Loaders that misbehave on purpose, run by the parser worker in tests of its limits.

A test points a file extension at one of these (``loaders._FORMATS``); the worker process
imports it by name, exactly as it imports the real loaders.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from kb_assistant.loaders.base import LoadContext, Section


def sleeps_forever(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """A parser stuck waiting (a hung read, a deadlock)."""
    time.sleep(3600)
    yield Section("never")


def spins_forever(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """A parser looping on the processor, producing nothing worth indexing."""
    while True:
        yield Section("")


def eats_memory(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """A parser that allocates without end (a decompression bomb's effect)."""
    hoard = []
    while True:
        hoard.append(bytearray(256 << 20))
        yield Section("x")


def crashes(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """A native parser that segfaults."""
    os.kill(os.getpid(), signal.SIGSEGV)
    yield Section("never")


def endless_text(path: Path, ctx: LoadContext) -> Iterator[Section]:
    """A parser whose output never ends (an amplification)."""
    while True:
        yield Section("amplified text " * 1000)
