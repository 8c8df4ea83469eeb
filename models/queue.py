"""The fair model queue: one model job at a time, the others served strictly in arrival order.

The chat model is one llama.cpp process that answers one prompt at a time. A bare lock would
let any waiter win when it is released; here each caller takes a ``Ticket`` and tickets are
served first come, first served. A full queue turns new callers away at once (``ModelBusy``,
with an estimate of when to come back) instead of letting them pile up; a caller that gives
up (a client that disconnected) leaves the queue, running or waiting, and the next one starts.

Thread-based, so that a server's event loop and plain threads can both use it: ``wait`` blocks
a thread; ``when_ready`` calls back (from whichever thread released the model) for async code.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from kb_assistant.errors import ModelBusy

TicketState = Literal["waiting", "running", "done"]


class Ticket:
    """One caller's place in a ``ModelQueue``."""

    def __init__(self, queue: ModelQueue) -> None:
        self._queue = queue
        self._turn = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.state: TicketState = "waiting"
        self.started: float | None = None

    @property
    def ready(self) -> bool:
        """Whether it is this caller's turn (the model is its own until ``leave``)."""
        return self._turn.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until it is this caller's turn; False if ``timeout`` passed first."""
        return self._turn.wait(timeout)

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when it is this caller's turn (at once if it already is)."""
        with self._queue._lock:
            if not self._turn.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def leave(self) -> None:
        """Give the place up: a running caller frees the model, a waiting one leaves the line.
        Leaving twice is harmless."""
        self._queue._leave(self)

    def _start(self) -> list[Callable[[], None]]:
        """Make this the running ticket; returns the callbacks to call outside the lock."""
        self.state = "running"
        self.started = time.monotonic()
        self._turn.set()
        callbacks, self._callbacks = self._callbacks, []
        return callbacks


class ModelQueue:
    """Serialises model jobs, fairly (see the module docstring).

    Args:
        capacity: how many callers may wait behind the running one; more are refused.
        default_seconds: the guess of one job's length until some have been timed.
        history: how many recent jobs the estimate averages.
    """

    def __init__(self, capacity: int, *, default_seconds: float = 5.0, history: int = 20) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be 0 or more (got {capacity})")
        self.capacity = capacity
        self._default = default_seconds
        self._lock = threading.Lock()
        self._running: Ticket | None = None
        self._waiting: deque[Ticket] = deque()
        self._durations: deque[float] = deque(maxlen=history)

    @property
    def running(self) -> bool:
        """Whether a job holds the model."""
        return self._running is not None

    @property
    def waiting(self) -> int:
        """How many callers wait behind it."""
        return len(self._waiting)

    @property
    def mean_seconds(self) -> float:
        """The recent jobs' mean length (the default guess before any finished)."""
        with self._lock:
            return self._mean()

    def _mean(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else self._default

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free: the jobs ahead times their mean length
        (at least 1)."""
        with self._lock:
            ahead = len(self._waiting) + (self._running is not None)
            return max(1, math.ceil(ahead * self._mean()))

    def join(self) -> Ticket:
        """Take a place: running at once if the model is free, else waiting in line.

        Raises:
            ModelBusy: ``capacity`` callers already wait; nothing was queued.
        """
        ticket = Ticket(self)
        with self._lock:
            if self._running is None and not self._waiting:
                self._running = ticket
                callbacks = ticket._start()
            elif len(self._waiting) >= self.capacity:
                ahead = len(self._waiting) + 1
                wait = max(1, math.ceil(ahead * self._mean()))
                raise ModelBusy(
                    f"the model is busy: {self.capacity} request(s) already wait for it; "
                    f"try again in about {wait} s",
                    retry_after=wait,
                )
            else:
                self._waiting.append(ticket)
                callbacks = []
        for callback in callbacks:
            callback()
        return ticket

    @contextmanager
    def turn(self) -> Iterator[Ticket]:
        """Hold the model for a block (for threads): join, wait for the turn, leave after."""
        ticket = self.join()
        try:
            ticket.wait()
            yield ticket
        finally:
            ticket.leave()

    def _leave(self, ticket: Ticket) -> None:
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            if ticket is self._running:
                if ticket.started is not None:
                    self._durations.append(time.monotonic() - ticket.started)
                self._running = None
                if self._waiting:
                    self._running = self._waiting.popleft()
                    callbacks = self._running._start()
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            ticket.state = "done"
        for callback in callbacks:
            callback()
