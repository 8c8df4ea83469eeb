"""One request's use of the chat model: its place in the fair queue, the work in a thread, the
tokens flowing back to the event loop, and what happens when the client goes away.

The work runs in a thread of its own (llama.cpp blocks); it holds the queue's place until it
has really ended, so the next job never meets a model still busy. Tokens pass through
``on_token``; once the client has gone, the next token raises ``Cancelled`` inside the model's
stream, which closes the generator chain down to the llama worker — that cancels the
generation (``models.worker.WorkerProcess.stream``) and frees the model. A request still
waiting for its turn when its client leaves just leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kb_assistant.errors import KBError
from kb_assistant.models.queue import ModelQueue, Ticket

logger = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.25  # how often a waiting or non-streaming request looks for a vanished client
OnToken = Callable[[str], None]


class Cancelled(Exception):
    """The client went away; raised from the token callback to stop the generation."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready; there is no one to answer."""


@dataclass
class _End:
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False


class ModelCall(Generic[T]):
    """A model job for one request (see the module docstring).

    ``enter`` takes the queue place (``ModelBusy`` at once when the queue is full), ``turn``
    waits for it, ``start`` runs ``work(on_token)`` in a thread (``begin`` does all three);
    then ``tokens()`` streams and ``outcome()`` gives the result, or ``result()`` does both for
    a non-streaming reply. ``on_token("")`` shows nothing: work without text to stream calls it
    between its steps to stop there (``Cancelled``) once the client has gone.
    """

    def __init__(self, queue: ModelQueue, request: Request) -> None:
        self._queue = queue
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._out: asyncio.Queue[str | _End] = asyncio.Queue()
        self._ticket: Ticket | None = None
        self._end: _End | None = None
        self.gone = threading.Event()

    def enter(self) -> None:
        """Take a place in the queue.

        Raises:
            ModelBusy: the queue is full.
        """
        self._ticket = self._queue.join()

    async def turn(self) -> None:
        """Wait for this request's turn, leaving the queue if the client disconnects.

        Raises:
            ClientGone: the client left while waiting.
        """
        ticket = self._require_ticket()
        ready: asyncio.Future[None] = self._loop.create_future()

        def settle() -> None:
            if not ready.done():
                ready.set_result(None)

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped
                self._loop.call_soon_threadsafe(settle)

        ticket.when_ready(notify)
        try:
            while not ready.done():
                await asyncio.wait([ready], timeout=POLL_S)
                if not ready.done() and await self._request.is_disconnected():
                    raise ClientGone
        except BaseException:  # gone, or the server stopping: the place goes to the next one
            ticket.leave()
            raise

    async def begin(self, work: Callable[[OnToken], T]) -> None:
        """``enter``, ``turn`` and ``start``: ``work`` runs once its turn has come.

        Raises:
            ModelBusy: the queue is full.
            ClientGone: the client left while waiting.
        """
        self.enter()
        await self.turn()
        self.start(work)

    def start(self, work: Callable[[OnToken], T]) -> None:
        """Run ``work(on_token)`` in a thread; the queue place is released when it ends."""
        ticket = self._require_ticket()

        def on_token(piece: str) -> None:
            if self.gone.is_set():
                raise Cancelled
            if piece:
                self._loop.call_soon_threadsafe(self._out.put_nowait, piece)

        def run() -> None:
            end = _End()
            try:
                end.result = work(on_token)
            except Cancelled:
                # Leaving this block drops the traceback, and with it the frames holding the
                # model's stream: the generators close now and the worker stops generating.
                end.cancelled = True
            except BaseException as exc:
                if not isinstance(exc, KBError):  # a bug: its traceback goes to the log
                    logger.exception("model job failed")
                exc.__traceback__ = None  # keep no frame (and no open stream) alive
                end.error = exc
            finally:
                ticket.leave()
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._out.put_nowait, end)

        threading.Thread(target=run, name="model-job", daemon=True).start()

    def cancel(self) -> None:
        """The client has gone: stop at the next token."""
        self.gone.set()

    async def tokens(self) -> AsyncIterator[str]:
        """The pieces of text as the model makes them, until the work ends."""
        while True:
            item = await self._out.get()
            if isinstance(item, _End):
                self._end = item
                return
            yield item

    def outcome(self) -> T:
        """The work's result once ``tokens`` is exhausted.

        Raises:
            whatever the work raised; ClientGone if it was cancelled.
        """
        end = self._end
        if end is None:
            raise RuntimeError("outcome() before the tokens were read to the end")
        if end.error is not None:
            raise end.error
        if end.cancelled:
            raise ClientGone
        return end.result  # type: ignore[no-any-return]

    async def result(self) -> T:
        """The work's result, watching the client meanwhile (one that leaves cancels it)."""
        while self._end is None:
            try:
                item = await asyncio.wait_for(self._out.get(), POLL_S)
            except TimeoutError:
                if not self.gone.is_set() and await self._request.is_disconnected():
                    self.cancel()
                continue
            if isinstance(item, _End):
                self._end = item
        return self.outcome()

    def _require_ticket(self) -> Ticket:
        if self._ticket is None:
            raise RuntimeError("enter() the queue first")
        return self._ticket


class ModelStream(StreamingResponse):
    """Server-sent events from a ``ModelCall``; when the response ends for any reason (the
    client disconnected included) the call is cancelled, which is a no-op once it is done."""

    def __init__(self, content: AsyncIterator[str], call: ModelCall[Any]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._call.cancel()
