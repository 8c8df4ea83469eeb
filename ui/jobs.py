"""Ingests and reindexes that run off the Streamlit script thread, so the page stays responsive.

A ``JobBoard`` (one per server process) starts each upload batch (or re-embedding of a
knowledge base) in a thread and keeps its progress; pages poll it. No Streamlit here: the board
is plain Python, testable alone.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kb_assistant.errors import KBError

if TYPE_CHECKING:
    from kb_assistant.assistant import Assistant
    from kb_assistant.ingest import IngestProgress, IngestReport

logger = logging.getLogger(__name__)
JobState = Literal["queued", "waiting", "running", "indexing", "done", "failed"]
FileOutcome = Literal["added", "updated", "unchanged", "failed", "skipped"]


@dataclass(frozen=True)
class FileResult:
    """What happened to one uploaded file."""

    name: str
    outcome: FileOutcome
    reason: str = ""


@dataclass
class IngestJob:
    """One upload batch being ingested into a knowledge base."""

    job_id: int
    kb: str
    uploads: dict[str, str]  # stored path -> the name the user uploaded
    state: JobState = "queued"
    files_done: int = 0
    chunks_done: int = 0
    reindex_to: str | None = None  # a reindex job: the embedding model it moves to
    chunks_total: int = 0  # known for a reindex
    current: str | None = None
    results: list[FileResult] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def files_total(self) -> int:
        """Files in the batch."""
        return len(self.uploads)

    @property
    def active(self) -> bool:
        """Still queued or running."""
        return self.state in ("queued", "waiting", "running", "indexing")

    @property
    def fraction(self) -> float:
        """Share of the files (of a reindex: the chunks) finished, 0..1."""
        if not self.active:
            return 1.0
        if self.reindex_to is not None:
            return self.chunks_done / max(1, self.chunks_total)
        return self.files_done / max(1, self.files_total)

    @property
    def seconds(self) -> float:
        """Time since the batch started (until it finished)."""
        return (self.finished or time.monotonic()) - self.started

    def name_of(self, path: str) -> str:
        """The uploaded name of a stored path."""
        return (
            self.uploads.get(path)
            or self.uploads.get(str(Path(path).resolve()))
            or (Path(path).name)
        )


class JobBoard:
    """Every ingest started from the app in this server process."""

    def __init__(self, keep: int = 20) -> None:
        self._jobs: list[IngestJob] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._keep = keep

    def start(self, assistant: Assistant, kb: str, uploads: dict[Path, str]) -> IngestJob:
        """Ingest the stored ``uploads`` (path -> uploaded name) into ``kb`` in a thread."""
        names = {str(p): n for p, n in uploads.items()}
        names.update({str(p.resolve()): n for p, n in uploads.items()})
        with self._lock:
            job = IngestJob(next(self._ids), kb, names)
            self._jobs.append(job)
            finished = [j for j in self._jobs if not j.active]
            for old in finished[: max(0, len(finished) - self._keep)]:
                self._jobs.remove(old)
        paths = list(uploads)
        thread = threading.Thread(
            target=self._run, args=(job, assistant, paths), name=f"ingest-{job.job_id}", daemon=True
        )
        thread.start()
        return job

    def start_reindex(self, assistant: Assistant, kb: str, model: str) -> IngestJob:
        """Re-embed ``kb`` with the embedding model ``model`` in a thread (``kb reindex``)."""
        with self._lock:
            job = IngestJob(next(self._ids), kb, {}, reindex_to=model)
            self._jobs.append(job)

        def run() -> None:
            def progress(done: int, total: int) -> None:
                job.state, job.chunks_done, job.chunks_total = "running", done, total

            def waiting() -> None:
                job.state = "waiting"

            self._guarded(job, lambda: assistant.reindex(
                kb=kb, embedding_model=model, progress=progress, on_wait=waiting))  # fmt: skip

        threading.Thread(target=run, name=f"reindex-{job.job_id}", daemon=True).start()
        return job

    @staticmethod
    def _guarded(job: IngestJob, work: Callable[[], object]) -> None:
        job.state = "running"
        try:
            work()
            job.state = "done"
        except KBError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a bug must not vanish with the thread: show it on the page
            logger.exception("job %s failed", job.job_id)
            job.error, job.state = f"unexpected error: {type(exc).__name__}: {exc}", "failed"
        finally:
            job.current = None
            job.finished = time.monotonic()

    def jobs(self, kb: str) -> list[IngestJob]:
        """The jobs of one knowledge base, newest first."""
        with self._lock:
            return [j for j in reversed(self._jobs) if j.kb == kb]

    def active(self, kb: str | None = None) -> list[IngestJob]:
        """Jobs still running (of one knowledge base, or all)."""
        with self._lock:
            return [j for j in self._jobs if j.active and (kb is None or j.kb == kb)]

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no job is running (for tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @staticmethod
    def _run(job: IngestJob, assistant: Assistant, paths: list[Path]) -> None:
        def progress(p: IngestProgress) -> None:
            job.state = "indexing" if p.indexing else "running"
            job.files_done, job.chunks_done = p.files_done, p.chunks_done
            job.current = job.name_of(p.current) if p.current else None

        def waiting() -> None:
            job.state = "waiting"

        def work() -> None:
            report = assistant.ingest(
                paths, kb=job.kb, progress=progress, on_wait=waiting, names=job.uploads
            )
            job.results = _results(job, report)
            job.files_done = job.files_total

        JobBoard._guarded(job, work)


def _results(job: IngestJob, report: IngestReport) -> list[FileResult]:
    groups: list[tuple[FileOutcome, list[str]]] = [
        ("added", report.added), ("updated", report.updated), ("unchanged", report.unchanged),
    ]  # fmt: skip
    results = [FileResult(job.name_of(p), outcome) for outcome, paths in groups for p in paths]
    results += [FileResult(job.name_of(f.path), "failed", f.error) for f in report.failed]
    results += [FileResult(job.name_of(f.path), "skipped", f.error) for f in report.skipped]
    return results


@dataclass
class AnswerJob:
    """One question being answered in a thread: the page streams ``text`` as it grows, and a
    rerun of the page (a click, a new question, leaving the page) does not lose the answer."""

    question: str
    kb: str
    session: str
    text: str = ""
    waiting: bool = False  # another question holds the model
    passages: list[dict[str, Any]] = field(default_factory=list)  # being read by the model
    reading_since: float | None = None
    done: bool = False
    refused: bool = False
    error: str | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def wait_for_change(self, seen: int, timeout: float = 0.5) -> None:
        """Block until the text is longer than ``seen`` characters, the job ends, or timeout."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.done
                    or len(self.text) > seen
                    or self.waiting
                    or bool(self.passages and not self.text)
                ),
                timeout,
            )

    def _update(self, **changes: object) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self._changed.notify_all()


def start_answer(assistant: Assistant, kb: str, session: str, question: str) -> AnswerJob:
    """Answer ``question`` in conversation ``session`` in a thread (the turn is saved by it)."""
    job = AnswerJob(question, kb, session)

    def run() -> None:
        try:
            answer = assistant.ask(
                question, kb=kb, conversation=session,
                on_token=lambda piece: job._update(text=job.text + piece, waiting=False),
                on_wait=lambda: job._update(waiting=True),
                on_passages=lambda cited: job._update(
                    passages=[c.to_json() for c in cited], reading_since=time.monotonic()
                ),
            )  # fmt: skip
            job._update(text=answer.answer, refused=answer.refused, done=True, waiting=False)
        except KBError as exc:
            job._update(error=str(exc), done=True, waiting=False)
        except Exception as exc:  # shown on the page rather than lost with the thread
            logger.exception("answer failed")
            job._update(error=f"unexpected error: {type(exc).__name__}: {exc}", done=True)

    threading.Thread(target=run, name="answer", daemon=True).start()
    return job
