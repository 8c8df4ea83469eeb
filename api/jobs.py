"""Background ingest jobs of ``kb serve``: an upload returns at once with a job id, the files
are ingested in a thread, and ``GET /jobs/{id}`` shows the progress and, at the end, the
ingest report (``IngestReport.to_json()``) or the error.

Job ids are random (``secrets.token_hex``): one client cannot guess another's jobs. Finished
jobs are kept for a while (the last ``keep``), so a client polling late still finds its result.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kb_assistant.errors import KBError

if TYPE_CHECKING:
    from kb_assistant.assistant import Assistant
    from kb_assistant.ingest import IngestProgress

logger = logging.getLogger(__name__)
JobState = Literal["queued", "waiting", "running", "indexing", "done", "failed"]


@dataclass
class IngestJob:
    """One upload batch being ingested into a knowledge base."""

    job_id: str
    kb: str
    files: dict[str, str]  # stored path -> the name it was uploaded as
    state: JobState = "queued"
    files_done: int = 0
    chunks_done: int = 0
    current: str | None = None
    report: dict[str, Any] | None = None
    outcomes: list[dict[str, str]] = field(default_factory=list)  # per uploaded name
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def active(self) -> bool:
        """Still queued or running."""
        return self.state not in ("done", "failed")

    def to_json(self) -> dict[str, Any]:
        """What ``GET /jobs/{id}`` answers."""
        end = self.finished if self.finished is not None else time.monotonic()
        return {
            "id": self.job_id, "kb": self.kb, "state": self.state,
            "progress": {
                "files_done": self.files_done, "files_total": len(self.files),
                "chunks_done": self.chunks_done, "current": self.current,
            },
            "files": self.outcomes, "report": self.report, "error": self.error,
            "created": int(self.created), "seconds": round(end - self.started, 3),
        }  # fmt: skip


class JobBoard:
    """Every ingest job of one server."""

    def __init__(self, assistant: Assistant, keep: int = 100) -> None:
        self._assistant = assistant
        self._jobs: dict[str, IngestJob] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def start(self, kb: str, files: dict[Path, str]) -> IngestJob:
        """Ingest the stored ``files`` (path -> uploaded name) into ``kb`` in a thread."""
        job = IngestJob(secrets.token_hex(8), kb, {str(p): n for p, n in files.items()})
        with self._lock:
            self._jobs[job.job_id] = job
            finished = [j for j in self._jobs.values() if not j.active]
            for old in finished[: max(0, len(finished) - self._keep)]:
                del self._jobs[old.job_id]
        threading.Thread(target=self._run, args=(job,), name=f"ingest-{job.job_id}",
                         daemon=True).start()  # fmt: skip
        return job

    def get(self, job_id: str) -> IngestJob | None:
        """The job with that id, if it is known."""
        with self._lock:
            return self._jobs.get(job_id)

    def running(self) -> list[IngestJob]:
        """The jobs not yet ended."""
        with self._lock:
            return [j for j in self._jobs.values() if j.active]

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no job runs (shutdown, tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = any(j.active for j in self._jobs.values())
            if not busy:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _run(self, job: IngestJob) -> None:
        def progress(p: IngestProgress) -> None:
            job.state = "indexing" if p.indexing else "running"
            job.files_done, job.chunks_done = p.files_done, p.chunks_done
            job.current = job.files.get(p.current, Path(p.current).name) if p.current else None

        def waiting() -> None:
            job.state = "waiting"

        job.state = "running"
        try:
            report = self._assistant.ingest(
                list(job.files), kb=job.kb, progress=progress, on_wait=waiting, names=job.files
            )
            job.report = report.to_json()
            job.outcomes = _outcomes(job, job.report)
            job.files_done = len(job.files)
            job.state = "done"
        except KBError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a bug must not vanish with the thread: the client sees it
            logger.exception("ingest job %s failed", job.job_id)
            job.error, job.state = f"unexpected error: {type(exc).__name__}: {exc}", "failed"
        finally:
            job.current = None
            job.finished = time.monotonic()


def _outcomes(job: IngestJob, report: dict[str, Any]) -> list[dict[str, str]]:
    """What happened to each file, by the name it was uploaded as (the report names the
    stored copies)."""

    def name(path: str) -> str:
        return job.files.get(path, Path(path).name)

    done = ("added", "updated", "unchanged")
    out = [{"name": name(p), "outcome": outcome} for outcome in done for p in report[outcome]]
    for outcome, key in (("failed", "error"), ("skipped", "reason")):
        out += [{"name": name(f["path"]), "outcome": outcome, "reason": f[key]}
                for f in report[outcome]]  # fmt: skip
    return out
