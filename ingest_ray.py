"""Ingest on a Ray cluster: workers read and embed, this process alone writes.

The driver (this process) finds the files and hashes them, so unchanged files stop here before
any work is sent. Each changed file becomes one Ray task that parses it (in the same parse
sandbox as the local engine), splits it and embeds its chunks with an embedder the worker
builds from the settings (one per worker process, kept for its next tasks). Tasks run on every
CPU of the cluster, largest file first; each result, as it comes back, goes through the local
engine's writer, one transaction per document, so reports, failures and progress read the
same. See docs/scaling.md.

A task is a pure function of a file: when its worker or node dies, Ray runs it again
(``max_retries``) and the driver still writes its result once. A document is only ever written
whole, after its task returned, so a lost task leaves nothing half-written.

Every node must see the files at the same path (a shared folder); a worker that finds a file
missing or different from what the driver hashed reports that file as failed.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb_assistant.errors import ConfigError, FileVanished, IngestError, KBError, ModelError
from kb_assistant.ingest import (
    Engine,
    Writing,
    chunk_layout,
    failed_event,
    plan_document,
    read_document,
    text_hash,
)
from kb_assistant.loaders.sandbox import POOL, ParseLimits
from kb_assistant.loaders.splitter import ChunkSplitter
from kb_assistant.models.embeddings import Embedder
from kb_assistant.models.factory import build_embedder
from kb_assistant.vectorstore.files import hash_file

if TYPE_CHECKING:
    import numpy as np

    from kb_assistant.ingest import _Event, _Job
    from kb_assistant.settings import Settings

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'kb-assistant[ray]'"
TASK_RETRIES = 3  # a worker or node that dies takes its file to another worker this often
TASKS_PER_CPU = 2  # files in flight per cluster CPU: enough to keep each busy while we write


@dataclass(frozen=True)
class RayJob:
    """What every task of one ingest needs besides its file (sent once, through the object
    store). ``settings`` carries the embedding backend, model cache, row cap and OCR mode."""

    settings: Settings
    model: str  # the knowledge base's embedding model
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    parse_limits: ParseLimits


@dataclass
class DocumentRead:
    """One file read and embedded by a worker: its events, and vectors/hashes that follow
    ``chunk_layout(events)``."""

    events: list[_Event]
    vectors: np.ndarray
    hashes: list[str]


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (it is an optional extra).
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"the Ray engine needs Ray, which is not installed ({exc}); install it with "
            f"{INSTALL_HINT}, or ingest with the local engine"
        ) from None
    return ray


def ray_engine(job: RayJob, *, address: str | None = None) -> Engine:
    """An ingest engine that reads and embeds on the Ray cluster at ``address`` (default:
    ``RAY_ADDRESS``, else a Ray started in this process for the ingest).

    Raises:
        ConfigError: Ray is not installed (checked now, before anything is opened).
    """
    import_ray()

    def engine(run: Writing) -> None:
        with _Connected(address) as ray:
            _feed(ray, run, job)

    return engine


class _Connected:
    """Connect for one ingest; disconnect after it unless the caller was connected already."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.started = False

    def __enter__(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():
            return ray
        # Ray reports usage statistics over the network unless told not to; kb stays offline.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        where = self.address or os.environ.get("RAY_ADDRESS") or ""
        try:
            _probe(where)  # Ray itself retries an unreachable address for minutes
            ray.init(
                address=self.address, include_dashboard=False, log_to_driver=False,
                configure_logging=False,
            )  # fmt: skip
        except (OSError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {where or 'a new local instance'}: "
                f"{' '.join(str(exc).split())}; start one with 'ray start --head' and pass its "
                "address (host:port) with --ray-address"
            ) from None
        self.started = True
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import_ray().shutdown()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` cluster address.

    Raises:
        OSError: the address refuses or does not answer.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:  # "auto", ray://: left to Ray
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


def _feed(ray: Any, run: Writing, job: RayJob) -> None:
    """Plan each file here, send changed ones to the cluster, write results as they come.

    Files go out largest first, so that the longest one does not start last and keep one CPU
    busy alone at the end; the report is put back in the order the files were found.
    """
    read = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(read_on_worker)
    shared = ray.put(job)
    window = max(2, int(ray.cluster_resources().get("CPU", 1)) * TASKS_PER_CPU)
    files = iter(sorted(run.files, key=_size, reverse=True))
    running: dict[Any, Path] = {}  # task reference -> its file
    try:
        while True:
            while len(running) < window and (path := next(files, None)) is not None:
                sent = _submit(read, shared, path, run.known)
                if isinstance(sent, DocumentRead):  # unchanged, or unreadable here
                    _write(run, sent, job)
                else:
                    running[sent] = path
            if not running:
                break
            (done,), _ = ray.wait(list(running), num_returns=1)
            _write(run, _result(ray, running.pop(done), done), job)
    finally:
        for pending in running:  # stopped early (an error, Ctrl-C): drop the rest
            ray.cancel(pending)
    _in_found_order(run)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # reported when the file is planned
        return 0


def _write(run: Writing, result: DocumentRead, job: RayJob) -> None:
    _check_model(result, job)
    run.consumer.write_embedded(result.events, result.vectors, result.hashes)


def _in_found_order(run: Writing) -> None:
    found = {str(path): i for i, path in enumerate(run.files)}
    report = run.consumer.report
    for paths in (report.added, report.updated, report.unchanged):
        paths.sort(key=lambda p: found.get(p, -1))
    report.failed.sort(key=lambda f: found.get(f.path, -1))  # stable: discovery's stay first


def _submit(read: Any, shared: Any, path: Path, known: dict[str, tuple[int, str]]) -> Any:
    """Hash ``path`` here; only a changed file is sent (its reference is returned)."""
    from kb_assistant.ingest import _Event

    try:
        planned = plan_document(path, known)
    except Exception as exc:  # unsupported, unreadable: reported as the local engine does
        return _ready([failed_event(path, exc)])
    if planned is None:
        return _ready([_Event("unchanged", path)])
    return read.remote(shared, planned)


def _ready(events: list[_Event]) -> DocumentRead:
    import numpy as np

    return DocumentRead(events, np.zeros((0, 0), dtype=np.float32), [])


def _result(ray: Any, path: Path, pending: Any) -> DocumentRead:
    """A task's result; a file whose workers kept dying fails alone, a model error stops all.

    Raises:
        ModelError: the embedding model failed on a worker.
    """
    from kb_assistant.ingest import _Event

    try:
        result: DocumentRead = ray.get(pending)
        return result
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, KBError):
            raise exc.cause from None
        raise
    except ray.exceptions.RayError as exc:
        logger.debug("lost the task of %s", path, exc_info=True)
        reason = " ".join(str(exc).split())[:200]
        return _ready([_Event(
            "failed", path,
            error=f"its Ray worker was lost {TASK_RETRIES + 1} times while reading it ({reason})",
        )])  # fmt: skip


def _check_model(result: DocumentRead, job: RayJob) -> None:
    if result.hashes and result.vectors.shape[1] != job.dimension:
        raise ModelError(
            f"a Ray worker embedded with {result.vectors.shape[1]} dimensions where the "
            f"knowledge base has {job.dimension} (model '{job.model}'); every node needs the "
            "same kb-assistant and models"
        )


# --- the worker side ------------------------------------------------------------------------

_EMBEDDERS: dict[tuple[str, str], Embedder] = {}  # per worker process: built once, reused


def read_on_worker(job: RayJob, planned: _Job) -> DocumentRead:
    """Parse, split and embed one file on a Ray worker (the task's body).

    Raises:
        ModelError: the embedding model cannot be built or run here.
    """
    embedder = _embedder(job)
    splitter = ChunkSplitter(embedder.token_counter, job.chunk_tokens, job.chunk_overlap)
    events: list[_Event] = []
    try:
        _same_file(planned)
    except Exception as exc:
        return _ready([failed_event(planned.path, exc, None)])
    with POOL.worker(job.parse_limits) as parse:
        read_document(
            planned.path, parse, events.append, known={}, splitter=splitter,
            max_rows=job.settings.max_rows_per_table, ocr=job.settings.ocr, planned=planned,
        )  # fmt: skip
    events = [e for e in events if e.kind != "pages"]  # page progress stays on the worker
    _, texts = chunk_layout(events)
    hashes = [text_hash(t) for t in texts]
    return DocumentRead(events, _embed_once(embedder, texts, hashes), hashes)


def _embedder(job: RayJob) -> Embedder:
    key = (job.settings.model_dump_json(), job.model)
    if key not in _EMBEDDERS:
        # One task per CPU: each embeds on one thread, so tasks do not fight over cores.
        settings = job.settings.model_copy(update={"threads": 1})
        _EMBEDDERS[key] = build_embedder(settings, job.model)
    return _EMBEDDERS[key]


def _same_file(planned: _Job) -> None:
    """The file this worker sees must be the one the driver hashed."""
    path = planned.path
    if not path.exists():
        raise FileVanished(
            f"{path}: not found on Ray node {platform.node()}; every node must see the files "
            "at the same path (a shared folder)"
        )
    if hash_file(path) != (planned.size, planned.sha256):
        raise IngestError(
            f"{path}: changed while it was being ingested, or differs on Ray node "
            f"{platform.node()}; ingest it again"
        )


def _embed_once(embedder: Embedder, texts: list[str], hashes: list[str]) -> np.ndarray:
    """Vectors for texts, each distinct text embedded once."""
    import numpy as np

    distinct = list(dict.fromkeys(hashes))
    text_of = dict(zip(hashes, texts, strict=True))
    row = {h: i for i, h in enumerate(distinct)}
    if not distinct:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    fresh = embedder.embed_array([text_of[h] for h in distinct])
    return np.asarray(fresh, dtype=np.float32)[[row[h] for h in hashes]]
