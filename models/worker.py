"""The app's side of the model worker (``models.llama_worker``): one running process, the
thread that reads its replies, and the words for how it died.

Requests carry an id; a reader thread hands each reply to the request waiting for it, so a
token count can be answered while a generation streams. When the pipe closes, every waiting
request fails with ``ModelCrashed``, naming the signal, its likely cause and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Generator
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kb_assistant.errors import ContextOverflow, ModelCrashed, ModelError
from kb_assistant.models.cpu import rebuild_command
from kb_assistant.processes import python_module

WORKER_MODULE = "kb_assistant.models.llama_worker"
_STOPPED = "the model worker was stopped"


@cache
def llama_build() -> dict[str, Any]:
    """What the installed llama-cpp-python was compiled with: version, CPU features, GPU
    offload. Asked of a child process (importing llama.cpp runs native code), once."""
    done = subprocess.run(
        python_module(WORKER_MODULE, "--build-info"), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ModelError(
            f"llama-cpp-python cannot be loaded: {_death(done.returncode, done.stderr)}"
        )
    return dict(json.loads(done.stdout))


class WorkerProcess:
    """One running ``llama_worker`` and the thread that reads its replies."""

    def __init__(self, config: dict[str, Any], model: Path) -> None:
        self.model = model
        requests_in, requests_out = os.pipe()
        replies_in, replies_out = os.pipe()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the worker's life)
        self._process = subprocess.Popen(
            python_module(WORKER_MODULE, str(requests_in), str(replies_out), json.dumps(config)),
            pass_fds=(requests_in, replies_out), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip
        os.close(requests_in)
        os.close(replies_out)
        self.pid = self._process.pid
        self._requests = Connection(requests_out, readable=False)
        self._replies = Connection(replies_in, writable=False)
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._next_id = 1
        self._dead: str | None = None
        self.served = 0  # requests answered in full
        self.ready = self._first_message()
        threading.Thread(target=self._read, name=f"llama-worker-{self.pid}", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._dead is None and self._process.poll() is None

    def _first_message(self) -> dict[str, Any]:
        """The worker's ``ready`` report; whatever else happens (a death, a fatal report, an
        interrupted wait), the worker is stopped and its pipes and log released."""
        try:
            try:
                message = json.loads(self._replies.recv_bytes())
            except (EOFError, OSError):
                raise ModelCrashed(f"{self.model}: {self._cause('loading the model')}") from None
            if "fatal" in message:
                raise ModelError(f"{self.model}: {message['fatal']}")
            return dict(message["ready"])
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        """Hand each reply to the request waiting for it; when the pipe ends (or anything
        goes wrong here), fail every waiter: none may wait forever."""
        try:
            while True:
                try:
                    message = json.loads(self._replies.recv_bytes())
                except (EOFError, OSError):
                    break
                waiting = self._pending.get(int(message.get("id", 0)))
                if waiting is not None:
                    waiting.put(message)
        finally:
            if self._dead is None:  # not stopped on purpose
                self._dead = self._cause("answering")
            for waiting in list(self._pending.values()):
                waiting.put({"died": self._dead})

    def _cause(self, stage: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        stderr = ""
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed by stop() meanwhile
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - 2000))
            stderr = self._stderr.read().decode(errors="replace")
        return f"the model worker died while {stage}: {_death(self._process.returncode, stderr)}"

    def _open(self, request: dict[str, Any]) -> tuple[int, queue.SimpleQueue[dict[str, Any]]]:
        if not self.alive:
            raise ModelCrashed(f"{self.model}: {self._dead or 'the model worker has stopped'}")
        replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._send_lock:
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = replies
            try:
                self._requests.send_bytes(json.dumps({**request, "id": rid}).encode())
            except OSError:
                del self._pending[rid]
                raise ModelCrashed(f"{self.model}: {self._cause('answering')}") from None
        return rid, replies

    def _take(self, replies: queue.SimpleQueue[dict[str, Any]]) -> dict[str, Any]:
        message = replies.get()
        if "died" in message:
            raise ModelCrashed(f"{self.model}: {message['died']}")
        if "error" in message:
            error = message["error"]
            if error["type"] == "overflow":
                raise ContextOverflow(error["message"])
            raise ModelError(f"{self.model}: llama.cpp failed ({error['message']})")
        return message

    def call(self, request: dict[str, Any]) -> Any:
        """One request, one reply (``ok``)."""
        rid, replies = self._open(request)
        try:
            value = self._take(replies)["ok"]
        finally:
            self._pending.pop(rid, None)
        self.served += 1
        return value

    def stream(self, request: dict[str, Any]) -> Generator[tuple[str, Any], None, None]:
        """A generation's ``(kind, value)`` messages: ``start``, ``piece``…, ``end``. A caller
        that stops early cancels the generation and waits for its end, so the next
        generation finds the worker idle."""
        rid, replies = self._open(request)
        ended = False
        try:
            while not ended:
                try:
                    message = self._take(replies)
                except ModelError:
                    ended = True  # an error or a death ends the request too
                    raise
                kind = next(k for k in ("start", "piece", "end") if k in message)
                ended = kind == "end"
                self.served += ended
                yield kind, message[kind]
        finally:
            if not ended and self.alive:
                with contextlib.suppress(OSError, ModelError):
                    cancel = json.dumps({"op": "cancel", "target": rid}).encode()
                    with self._send_lock:  # one message at a time on the pipe
                        self._requests.send_bytes(cancel)
                    while "end" not in self._take(replies):
                        pass
            self._pending.pop(rid, None)

    @property
    def stopped(self) -> bool:
        """Whether it was stopped on purpose (``stop``), not by a death."""
        return self._dead == _STOPPED

    def stop(self) -> None:
        """End the worker now."""
        self._dead = self._dead or _STOPPED
        for end in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                end.close()
        if self._process.poll() is None:
            self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        self._stderr.close()


_SIGNALS: dict[int, str] = {
    signal.SIGILL: (
        "this llama.cpp build uses an instruction the CPU cannot run; it was probably compiled "
        f"for another machine. Rebuild it for this one: {rebuild_command()}"
    ),
    signal.SIGSEGV: (
        "llama.cpp crashed: the model file may be damaged or made for a newer llama.cpp, or "
        "the build uses instructions this machine faults on (AMX). 'kb doctor' tells which; "
        f"a rebuild for this CPU is: {rebuild_command()}"
    ),
    signal.SIGBUS: "the model file changed or was truncated while it was in use; reload it",
    signal.SIGKILL: (
        "it was killed (SIGKILL), most often by the kernel for lack of memory: choose a smaller "
        "model or context (kb doctor estimates the memory they need)"
    ),
    signal.SIGABRT: "llama.cpp stopped itself on an internal check (SIGABRT)",
}


def _death(code: int | None, stderr: str) -> str:
    """A worker's end, in words: the signal, its likely cause and fix, its last words."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = f" (last output: {lines[-1][:300]})" if lines else ""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-code}"
        reason = _SIGNALS.get(-code, "llama.cpp crashed")
        return f"{name}: {reason}{last}"
    return f"exit status {code}{last}"
