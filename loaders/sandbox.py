"""Parse files in a child process that can be stopped.

A parser that loops, sleeps or swallows memory on a hostile file cannot be stopped from a
thread (``Future.cancel()`` does nothing to a running call). So every file is parsed in a
worker process that:

- checks the file first (``loaders.limits.inspect``: ZIP directories, XML entities, PDF
  inflation), so those checks run under the same limits;
- lives under an address-space limit (``RLIMIT_AS``, ``memory_mb``): past it allocations fail,
  and the file fails with "needs more than N MB";
- is killed when it sends nothing for ``timeout`` seconds (waits on our side, such as the
  pipe being full while we embed, do not count), and when it has spent ``cpu_seconds`` on one
  file; the next file gets a fresh worker.

Sections travel back as JSON over a pipe: nothing is unpickled. Workers are kept in a small
pool and reused by the next ingest, so a batch pays the ~0.3 s start once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kb_assistant import errors
from kb_assistant.errors import CorruptDocument, IngestError, KBError, ParserStopped
from kb_assistant.loaders.base import LoadContext, Section, read_problem
from kb_assistant.processes import python_module

logger = logging.getLogger(__name__)
SectionSource = Callable[[Path, str, str, "LoadContext"], Iterator[Section]]
BATCH_CHARS = 1 << 20
_IDLE_WORKERS = 2


@dataclass(frozen=True)
class ParseLimits:
    """What one file's parsing may cost."""

    timeout: float = 60.0  # seconds without sending anything
    cpu_seconds: float = 300.0  # processor time on one file
    memory_mb: int = 4096  # address space of the worker process


class ParserProcess:
    """One worker process and the pipes to it.

    Started as ``python -E -P -m kb_assistant.loaders.sandbox`` (isolated: nothing from the
    current folder or ``PYTHON*`` variables can be imported in its place) rather than through
    ``multiprocessing``, whose children re-import the parent's main module: under Streamlit
    that is ``app.py``, and the worker would run the whole app.
    """

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        requests_in, requests_out = os.pipe()
        replies_in, replies_out = os.pipe()
        self._process = subprocess.Popen(
            python_module("kb_assistant.loaders.sandbox", str(requests_in), str(replies_out),
                          json.dumps(asdict(limits))),
            pass_fds=(requests_in, replies_out), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(requests_in)
        os.close(replies_out)
        self._requests = Connection(requests_out, readable=False)
        self._conn = Connection(replies_in, writable=False)

    @property
    def alive(self) -> bool:
        """Whether the worker can take another file."""
        return self._process.poll() is None

    def sections(self, path: Path, fmt: str, loader: str, ctx: LoadContext) -> Iterator[Section]:
        """Stream the sections of one file from the worker.

        Raises:
            IngestError: whatever the loader raised, rebuilt by class name.
            ParserStopped: the worker was stopped (time, memory) or died.
        """
        request = {
            "path": str(path), "format": fmt, "loader": loader, "max_rows": ctx.max_rows,
            "ocr": ctx.ocr,
        }  # fmt: skip
        self._requests.send_bytes(json.dumps(request).encode())
        finished = False
        try:
            while True:
                message = self._receive(path)
                if "sections" in message:
                    for data in message["sections"]:
                        yield Section.from_json(data)
                elif "page" in message:
                    ctx.page_done(*message["page"])
                elif "end" in message:
                    finished = True
                    ctx.pages = message["end"]["pages"]
                    for note in message["end"]["notes"]:
                        ctx.note(note)
                    return
                else:
                    finished = True
                    raise _rebuilt(message["error"])
        finally:
            if not finished:  # stopped, or the reader stopped reading: this worker is spent
                self.kill()

    def _receive(self, path: Path) -> dict[str, Any]:
        if not self._conn.poll(self.limits.timeout):
            self.kill()
            raise ParserStopped(
                f"{path}: the parser produced nothing for {self.limits.timeout:.0f} s and was "
                "stopped (a looping or hostile file?)"
            )
        try:
            return dict(json.loads(self._conn.recv_bytes()))
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            raise ParserStopped(f"{path}: {self._death()}") from None

    def _death(self) -> str:
        code = self._process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return (
                f"the parser crashed ({name}); the file may be damaged or hostile, or need more "
                f"than {self.limits.memory_mb} MB of memory"
            )
        return f"the parser exited unexpectedly (exit code {code})"

    def kill(self) -> None:
        """Stop the worker now."""
        if self._process.poll() is None:
            self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        for end in (self._requests, self._conn):
            with contextlib.suppress(OSError):
                end.close()


class ParserPool:
    """Idle workers kept for the next file or the next ingest, per limits."""

    def __init__(self) -> None:
        self._idle: list[ParserProcess] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def worker(self, limits: ParseLimits) -> Iterator[SectionSource]:
        """A function ``(path, fmt, loader, ctx) -> sections`` backed by pooled workers."""
        held: list[ParserProcess] = []

        def sections(path: Path, fmt: str, loader: str, ctx: LoadContext) -> Iterator[Section]:
            if not held or not held[0].alive:
                held[:] = [self._take(limits)]
            return held[0].sections(path, fmt, loader, ctx)

        try:
            yield sections
        finally:
            for process in held:
                self._give_back(process)

    def _take(self, limits: ParseLimits) -> ParserProcess:
        with self._lock:
            for process in self._idle:
                if process.limits == limits and process.alive:
                    self._idle.remove(process)
                    return process
        return ParserProcess(limits)

    def clear(self) -> None:
        """Stop the idle workers (the next file starts a new one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for process in idle:
            process.kill()

    def _give_back(self, process: ParserProcess) -> None:
        with self._lock:
            if process.alive and len(self._idle) < _IDLE_WORKERS:
                self._idle.append(process)
                return
        process.kill()


POOL = ParserPool()


def _rebuilt(error: dict[str, str]) -> IngestError:
    cls = getattr(errors, error["kind"], None)
    if isinstance(cls, type) and issubclass(cls, IngestError):
        return cls(error["message"])
    return CorruptDocument(error["message"])


# --- the worker side ------------------------------------------------------------------------


def serve(requests: Connection, conn: Connection, limits: ParseLimits) -> None:
    """The worker's loop: one request at a time until the pipe closes."""
    import resource

    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            _parse(conn, request, limits)
        except MemoryError:
            _send(conn, {"error": _error(
                "ParserStopped",
                f"{request['path']}: needs more than {limits.memory_mb} MB of memory to parse; "
                "stopped",
            )})  # fmt: skip


def _parse(conn: Connection, request: dict[str, Any], limits: ParseLimits) -> None:
    from kb_assistant.loaders.limits import inspect

    path = Path(request["path"])
    ctx = LoadContext(max_rows=int(request["max_rows"]), ocr=request.get("ocr", "auto"))
    ctx.on_page = lambda done, total: _send(conn, {"page": [done, total]})
    started = time.process_time()
    batch: list[dict[str, Any]] = []
    size = 0
    try:
        inspect(path, request["format"])
        module, function = str(request["loader"]).split(":")
        loader = getattr(importlib.import_module(module), function)
        for section in loader(path, ctx):
            batch.append(asdict(section))
            size += len(section.text)
            if size >= BATCH_CHARS or len(batch) >= 64:
                _send(conn, {"sections": batch})
                batch, size = [], 0
            allowed = limits.cpu_seconds + ctx.extra_cpu_seconds
            if time.process_time() - started > allowed:
                raise ParserStopped(
                    f"{path}: parsing took more than {allowed:.0f} s of processor time; stopped"
                )
        if batch:
            _send(conn, {"sections": batch})
        _send(conn, {"end": {"pages": ctx.pages, "notes": ctx.notes}})
    except MemoryError:
        raise
    except KBError as exc:
        kind = type(exc).__name__ if isinstance(exc, IngestError) else "CorruptDocument"
        _send(conn, {"error": _error(kind, str(exc))})
    except Exception as exc:  # parsers of hostile files raise anything at all
        logger.debug("failed to parse %s", path, exc_info=True)
        _send(conn, {"error": _error("CorruptDocument", f"{path}: {read_problem(exc)}")})


def _error(kind: str, message: str) -> dict[str, str]:
    return {"kind": kind, "message": message}


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, ensure_ascii=False).encode())


if __name__ == "__main__":
    serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
        ParseLimits(**json.loads(sys.argv[3])),
    )
