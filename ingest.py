"""Ingest files and folders into a knowledge base, incrementally.

A producer thread walks the paths, hashes each file (unchanged files stop there), parses it and
cuts it into chunks; the calling thread embeds chunks in batches that span files and writes each
document in its own transaction. Parsing is mostly Python and embedding mostly native code that
releases the GIL, so the two overlap on two cores. Per-file problems are reported in the
``IngestReport`` and never stop the batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb_assistant.errors import EmptyDocument, FileVanished, KBError, KnowledgeBaseError
from kb_assistant.loaders import LoadContext, is_supported, loader_of
from kb_assistant.loaders.base import OcrMode, read_problem
from kb_assistant.loaders.limits import Budget
from kb_assistant.loaders.sandbox import POOL, ParseLimits, SectionSource
from kb_assistant.loaders.splitter import Chunk, ChunkSplitter
from kb_assistant.models.embeddings import Embedder
from kb_assistant.vectorstore import KnowledgeBase, KnowledgeBaseWriter, NewChunk
from kb_assistant.vectorstore.files import hash_file
from kb_assistant.vectorstore.keywords import index_text

logger = logging.getLogger(__name__)
CHUNKS_PER_EVENT = 64
MAX_CHUNKS = 2_000_000  # per document (the 200 MB text benchmark makes 494,095)


@dataclass(frozen=True)
class FileProblem:
    """A file that was not ingested, and why (one line)."""

    path: str
    error: str


@dataclass
class IngestReport:
    """What an ingest did. ``to_json`` gives the stable keys of ``kb ingest --json``."""

    kb: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[FileProblem] = field(default_factory=list)
    skipped: list[FileProblem] = field(default_factory=list)
    chunks_added: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form."""
        return {
            "kb": self.kb,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": [{"path": f.path, "error": f.error} for f in self.failed],
            "skipped": [{"path": f.path, "reason": f.error} for f in self.skipped],
            "chunks_added": self.chunks_added,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class IngestProgress:
    """Where an ingest is, for progress bars."""

    files_done: int
    files_total: int
    chunks_done: int
    current: str | None
    indexing: bool = False  # the files are in; the search index is being rebuilt for its size
    pages_done: int = 0  # of the file being read, where it is read page by page (OCR)
    pages_total: int = 0


ProgressCallback = Callable[[IngestProgress], None]


# --- finding files ------------------------------------------------------------------------


@dataclass
class Discovery:
    """Files to ingest, and paths that were refused or passed over while looking."""

    files: list[Path] = field(default_factory=list)
    failed: list[FileProblem] = field(default_factory=list)
    skipped: list[FileProblem] = field(default_factory=list)


def discover(paths: Iterable[Path]) -> Discovery:
    """Expand files and folders (recursively, following links, refusing link loops).

    Named files are always taken (an unsupported one then fails with a reason); inside folders,
    hidden entries are passed over and unsupported files are listed as skipped.
    """
    found = Discovery()
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser().absolute()
        if not os.path.lexists(path):
            found.failed.append(FileProblem(str(path), "no such file or directory"))
        elif not path.exists():
            found.failed.append(FileProblem(str(path), _link_problem(path)))
        elif path.is_dir():
            _walk(path, found, seen, ancestors=(path.resolve(),))
        elif path.resolve() not in seen:
            seen.add(path.resolve())
            found.files.append(path)
    return found


def _link_problem(path: Path) -> str:
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return "symbolic link loop"
    return f"broken symbolic link (points to {os.readlink(path)})"


def _walk(folder: Path, found: Discovery, seen: set[Path], ancestors: tuple[Path, ...]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        found.failed.append(FileProblem(str(folder), f"cannot list folder: {exc.strerror}"))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if not path.exists():
            found.failed.append(FileProblem(str(path), _link_problem(path)))
            continue
        real = path.resolve()
        if entry.is_dir(follow_symlinks=True):
            if real in ancestors:
                found.failed.append(
                    FileProblem(str(path), f"symbolic link loop (points back to {real})")
                )
            elif real not in seen:
                seen.add(real)
                _walk(path, found, seen, (*ancestors, real))
        elif real in seen:
            continue
        elif not is_supported(path):
            found.skipped.append(FileProblem(str(path), f"unsupported file type '{path.suffix}'"))
        else:
            seen.add(real)
            found.files.append(path)


# --- the pipeline -------------------------------------------------------------------------


@dataclass
class _Job:
    path: Path
    source: str
    sha256: str
    size: int
    fmt: str
    replaces: bool
    pages: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Event:
    kind: str  # start | chunks | end | failed | unchanged | crashed | pages
    path: Path
    job: _Job | None = None
    chunks: list[Chunk] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # full-text tokens, one per chunk
    error: str = ""
    pages: tuple[int, int] = (0, 0)  # a "pages" event: done, total


_DONE = _Event("done", Path())


class _Stopped(BaseException):
    """Raised in a held reader once the ingest has ended; not an Exception, so that no
    per-file handler takes it for a problem with the file."""


def _problem(path: Path, exc: BaseException) -> str:
    """A one-line reason, without the path (the report gives it)."""
    reason = _describe(path, exc)
    line = " ".join(reason.split())
    return line if len(line) <= 300 else line[:299] + "…"


def _describe(path: Path, exc: BaseException) -> str:
    if isinstance(exc, KBError):
        message = str(exc)
        prefix = f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message
    return read_problem(exc)


class _Producer(threading.Thread):
    def __init__(
        self,
        files: list[Path],
        known: dict[str, tuple[int, str]],
        splitter: ChunkSplitter,
        max_rows: int,
        *,
        limits: ParseLimits,
        events: queue.Queue[_Event],
        ocr: OcrMode = "auto",
        handoff: threading.Lock | None = None,
        held: bool = False,
    ) -> None:
        super().__init__(name="kb-ingest-reader", daemon=True)
        self.files, self.known, self.splitter = files, known, splitter
        self.max_rows, self.limits, self.events, self.ocr = max_rows, limits, events, ocr
        self.stop = threading.Event()
        # Two readers share one queue; the consumer writes one document at a time, so each
        # document's events must arrive together. The streaming reader holds ``handoff`` while
        # it reads a file; a ``held`` reader (slow OCR files) keeps a file's events until it is
        # read, then hands them over at once.
        self.handoff = handoff or threading.Lock()
        self.held = held
        self._kept: list[_Event] | None = None

    def put(self, event: _Event) -> None:
        if self.held and self.stop.is_set():
            raise _Stopped  # the ingest ended: stop reading this scan now, not after its OCR
        if self._kept is not None and event.kind != "pages":
            self._kept.append(event)
            return
        while not self.stop.is_set():
            try:
                self.events.put(event, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            with POOL.worker(self.limits) as parse:
                for path in self.files:
                    if self.stop.is_set():
                        return
                    if not self.held:
                        with self.handoff:
                            self._one(path, parse)
                        continue
                    self._kept = []
                    self._one(path, parse)
                    kept, self._kept = self._kept, None
                    with self.handoff:
                        for event in kept:
                            self.put(event)
        except _Stopped:
            pass
        except BaseException as exc:  # a bug here must reach the caller, not die silently
            self._kept = None
            self.put(_Event("crashed", Path(), error=repr(exc)))
        finally:
            self._kept = None
            if not self.stop.is_set():
                self.put(_DONE)

    def _one(self, path: Path, parse: SectionSource) -> None:
        read_document(path, parse, self.put, known=self.known, splitter=self.splitter,
                      max_rows=self.max_rows, ocr=self.ocr)  # fmt: skip


def plan_document(path: Path, known: dict[str, tuple[int, str]]) -> _Job | None:
    """What reading ``path`` means: None when its stored hash (``known``: source -> (size,
    sha256)) says it is unchanged, else the job of (re)reading it.

    Raises:
        UnsupportedFormat, OSError: the file cannot be read at all.
    """
    fmt, _ = loader_of(path)
    size, sha = hash_file(path)
    source = str(path.resolve())
    previous = known.get(source)
    if previous is not None and previous[1] == sha:
        return None
    return _Job(path, source, sha, size, fmt, replaces=previous is not None)


def read_document(
    path: Path,
    parse: SectionSource,
    put: Callable[[_Event], None],
    *,
    known: dict[str, tuple[int, str]],
    splitter: ChunkSplitter,
    max_rows: int,
    ocr: OcrMode,
    planned: _Job | None = None,
) -> None:
    """Hash, parse and split one file, as events for the writer (both engines read with it).

    An unchanged file stops at its hash (see ``plan_document``), unless ``planned`` says
    what to read. Every problem with the file becomes a "failed" event; nothing is raised.
    """
    job = planned
    try:
        if job is None:
            job = plan_document(path, known)
            if job is None:
                put(_Event("unchanged", path))
                return
        put(_Event("start", path, job))
        _, loader = loader_of(path)
        ctx = LoadContext(max_rows=max_rows, ocr=ocr)
        ctx.on_page = lambda done, total: put(_Event("pages", path, pages=(done, total)))
        batch: list[Chunk] = []
        total = 0
        # Parsed in a worker process (time and memory limits), cut at the file's
        # character allowance, and at MAX_CHUNKS.
        parsed = parse(path, job.fmt, loader, ctx)
        try:
            for chunk in splitter.split_sections(Budget(job.size, ctx).apply(parsed)):
                if total + len(batch) >= MAX_CHUNKS:
                    ctx.note(f"truncated: only the first {MAX_CHUNKS:,} chunks indexed")
                    break
                batch.append(chunk)
                if len(batch) >= CHUNKS_PER_EVENT:
                    put(_chunks_event(path, job, batch))
                    total += len(batch)
                    batch = []
        finally:
            parsed.close()  # type: ignore[attr-defined]
        total += len(batch)
        if batch:
            put(_chunks_event(path, job, batch))
        if total == 0:
            raise EmptyDocument(f"{path}: no text found")
        if not path.exists():
            raise FileVanished(f"{path}: file disappeared while it was being read")
        job.pages, job.notes = ctx.pages, ctx.notes
        put(_Event("end", path, job))
    except Exception as exc:
        # Parsers of damaged or hostile files raise anything at all (zipfile, lxml, pandoc,
        # pptx errors...): this file fails with a one-line reason, the batch goes on.
        put(failed_event(path, exc, job))


def failed_event(path: Path, exc: Exception, job: _Job | None = None) -> _Event:
    """The event of a file that cannot be ingested, with its one-line reason."""
    logger.debug("failed to read %s", path, exc_info=exc)
    return _Event("failed", path, job, error=_problem(path, exc))


def _chunks_event(path: Path, job: _Job, chunks: list[Chunk]) -> _Event:
    # Segmenting here, on the reader thread, overlaps jieba's work with embedding.
    return _Event("chunks", path, job, chunks, [index_text(c.embed_text) for c in chunks])


def text_hash(text: str) -> str:
    """The key of the embedding cache: a hash of the text a chunk was embedded from."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def chunk_layout(
    events: list[_Event], skip: _Job | None = None
) -> tuple[list[slice | None], list[str]]:
    """Where each event's chunks sit in one batch of texts to embed, and those texts (events
    of ``skip``, a job that died while being written, get none)."""
    slices: list[slice | None] = []
    texts: list[str] = []
    for event in events:
        if event.chunks and (skip is None or event.job is not skip):
            slices.append(slice(len(texts), len(texts) + len(event.chunks)))
            texts.extend(c.embed_text for c in event.chunks)
        else:
            slices.append(None)
    return slices, texts


class _Consumer:
    """Embeds pending chunks in batches and replays the events into the writer in order."""

    def __init__(
        self,
        writer: KnowledgeBaseWriter,
        embedder: Embedder,
        report: IngestReport,
        flush_chunks: int,
        notify: Callable[[str | None], None],
        *,
        names: dict[str, str],
    ) -> None:
        self.writer, self.embedder, self.report = writer, embedder, report
        self.names = names
        self.flush_chunks, self.notify = flush_chunks, notify
        self.pending: list[_Event] = []
        self.pending_chunks = 0
        self.open_job: _Job | None = None
        self.dead: _Job | None = None  # a job that failed while being written

    def add(self, event: _Event) -> None:
        self.pending.append(event)
        self.pending_chunks += len(event.chunks)
        if self.pending_chunks >= self.flush_chunks:
            self.flush()

    def flush(self) -> None:
        # Offsets are fixed before replaying: a job may die while its events are replayed.
        slices, texts = chunk_layout(self.pending, skip=self.dead)
        hashes = [text_hash(t) for t in texts]
        self._replay(self.pending, slices, self._vectors(texts, hashes), hashes)
        self.pending, self.pending_chunks = [], 0

    def write_embedded(self, events: list[_Event], vectors: Any, hashes: list[str]) -> None:
        """Write events whose chunks were embedded elsewhere: ``vectors`` and ``hashes`` follow
        ``chunk_layout(events)`` (the Ray engine's workers embed; this writer only writes)."""
        self.flush()
        slices, _ = chunk_layout(events)
        self._replay(events, slices, vectors, hashes)

    def _replay(
        self, events: list[_Event], slices: list[slice | None], vectors: Any, hashes: list[str]
    ) -> None:
        for event, part in zip(events, slices, strict=True):
            if part is None:
                self._apply(event, None, [])
            else:
                self._apply(event, vectors[part], hashes[part])

    def _vectors(self, texts: list[str], hashes: list[str]) -> Any:
        """Vectors for texts: stored ones reused, each distinct new text embedded once."""
        import numpy as np

        known = self.writer.cached_vectors(hashes)
        missing = list(dict.fromkeys(h for h in hashes if h not in known))
        if missing:
            text_of = dict(zip(hashes, texts, strict=True))
            fresh = self.embedder.embed_array([text_of[h] for h in missing])
            known.update(zip(missing, fresh, strict=True))
        out = np.zeros((len(texts), self.embedder.dimension), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = known[h]
        return out

    def _apply(self, event: _Event, vectors: Any, hashes: list[str]) -> None:
        if event.kind == "unchanged":
            self.report.unchanged.append(str(event.path))
            self.notify(None)
            return
        if event.kind == "failed":
            if event.job is not None and event.job is self.open_job:
                self.writer.abort_document()
                self.open_job = None
            if event.job is None or event.job is not self.dead:  # a dead job is reported already
                self.report.failed.append(FileProblem(str(event.path), event.error))
            self.notify(None)
            return
        if event.kind == "crashed":
            raise RuntimeError(f"the file reader stopped unexpectedly: {event.error}")
        job = event.job
        if job is None or job is self.dead:
            return
        try:
            self._write(event, job, vectors, hashes)
        except (sqlite3.Error, KnowledgeBaseError) as exc:
            logger.debug("failed to write %s", event.path, exc_info=True)
            if self.open_job is not None:
                self.writer.abort_document()
                self.open_job = None
            self.dead = job
            self.report.failed.append(FileProblem(str(event.path), f"cannot store: {exc}"))
            self.notify(None)

    def _write(self, event: _Event, job: _Job, vectors: Any, hashes: list[str]) -> None:
        if event.kind == "start":
            name = self.names.get(job.source, job.path.name)
            self.writer.begin_document(job.source, name, job.sha256, job.size, job.fmt)
            self.open_job = job
            self.notify(str(job.path))
        elif event.kind == "chunks":
            start = self.writer.next_ordinal
            rows = [
                NewChunk(
                    start + i,
                    c.text,
                    c.page,
                    c.heading,
                    c.sheet,
                    c.tokens,
                    h,
                    words,
                    c.boxes,
                    c.ocr,
                )
                for i, (c, h, words) in enumerate(
                    zip(event.chunks, hashes, event.keywords, strict=True)
                )
            ]
            self.writer.add_chunks(rows, vectors)
        elif event.kind == "end":
            count = self.writer.commit_document(job.pages, job.notes)
            self.open_job = None
            (self.report.updated if job.replaces else self.report.added).append(str(job.path))
            self.report.chunks_added += count
            self.notify(None)


@dataclass
class Writing:
    """An ingest whose writer is open, as an engine sees it: the files to read, the stored
    hashes (unchanged files stop there), and the writer's side, which takes each document's
    events in order."""

    files: list[Path]
    known: dict[str, tuple[int, str]]
    consumer: _Consumer
    show_pages: Callable[[Path, int, int], None]  # a file read page by page: done, total


Engine = Callable[[Writing], None]


def ingest(
    kb: KnowledgeBase,
    embedder: Embedder,
    paths: Iterable[Path],
    *,
    chunk_tokens: int,
    chunk_overlap: int,
    max_rows: int,
    ocr: OcrMode = "auto",
    names: dict[str, str] | None = None,
    parse_limits: ParseLimits | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    lock_timeout: float = 600.0,
    on_wait: Callable[[], None] | None = None,
    engine: Engine | None = None,
) -> IngestReport:
    """Ingest files and folders into ``kb``; see the module docstring.

    ``engine`` reads the files and feeds the writer; by default, reader threads in this
    process (``ingest_ray`` passes one that reads and embeds on a Ray cluster).

    Raises:
        KnowledgeBaseLocked: another writer held the knowledge base past ``lock_timeout``.
        ModelError: the embedding model failed (nothing half-written is kept).
    """
    started = time.perf_counter()
    report = IngestReport(kb=kb.name)
    found = discover(paths)
    report.failed.extend(found.failed)
    report.skipped.extend(found.skipped)
    done = [0, 0]  # files finished, chunks committed
    if engine is None:
        splitter = ChunkSplitter(embedder.token_counter, chunk_tokens, chunk_overlap)
        limits = parse_limits or ParseLimits()

        def engine(run: Writing) -> None:
            _read_here(run, splitter, max_rows, ocr, limits)

    def notify(current: str | None) -> None:
        if current is None:
            done[0] += 1
        if progress is not None:
            progress(IngestProgress(done[0], len(found.files), report.chunks_added, current))

    def show_pages(path: Path, pages_done: int, pages_total: int) -> None:
        if progress is not None:
            progress(IngestProgress(
                done[0], len(found.files), report.chunks_added, str(path),
                pages_done=pages_done, pages_total=pages_total,
            ))  # fmt: skip

    with kb.writer(timeout=lock_timeout, on_wait=on_wait) as writer:
        labels = {str(Path(p).resolve()): n for p, n in (names or {}).items()}
        consumer = _Consumer(writer, embedder, report, 4 * batch_size, notify, names=labels)
        engine(Writing(found.files, writer.catalog.source_hashes(), consumer, show_pages))
        consumer.flush()
        if progress is not None and writer.needs_rebuild():
            # Closing the writer retrains the index (~20 s at 10^6 chunks): say so.
            total = len(found.files)
            progress(IngestProgress(done[0], total, report.chunks_added, None, indexing=True))
    report.seconds = time.perf_counter() - started
    return report


def _read_here(
    run: Writing, splitter: ChunkSplitter, max_rows: int, ocr: OcrMode, limits: ParseLimits
) -> None:
    """The local engine: reader threads (one for likely scans) feed the writer here."""
    events: queue.Queue[_Event] = queue.Queue(maxsize=32)
    handoff = threading.Lock()
    producers = [
        _Producer(
            files, run.known, splitter, max_rows, limits=limits, events=events, ocr=ocr,
            handoff=handoff, held=bool(slow),
        )
        for slow, files in enumerate(_lanes(run.files, ocr))
        if files
    ]  # fmt: skip
    for producer in producers:
        producer.start()
    try:
        for event in _until_done(events, len(producers)):
            if event.kind == "pages":  # progress only: shown now, nothing to write
                run.show_pages(event.path, *event.pages)
                continue
            run.consumer.add(event)
    finally:
        for producer in producers:
            producer.stop.set()
        for producer in producers:
            producer.join(timeout=5)


def _until_done(events: queue.Queue[_Event], readers: int) -> Iterator[_Event]:
    while readers:
        event = events.get()
        if event is _DONE:
            readers -= 1
        else:
            yield event


def _lanes(files: list[Path], ocr: OcrMode) -> tuple[list[Path], list[Path]]:
    """Files read as they stream, and files that will mostly be OCR'd (images, PDFs with no
    font: scans), which get a reader of their own so the rest of the batch is not blocked
    behind minutes of OCR. A guess from names and bytes, never a parse: a wrong guess only
    changes which reader takes a file."""
    if ocr == "never":
        return files, []
    fast: list[Path] = []
    slow: list[Path] = []
    for path in files:
        (slow if _likely_scan(path) else fast).append(path)
    return fast, slow


def _likely_scan(path: Path) -> bool:
    import mmap

    suffix = path.suffix.lower()
    if suffix != ".pdf":
        return is_supported(path) and loader_of(path)[0] == "image"
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(b"/Font") < 0 and data.find(b"/ObjStm") < 0
    except (OSError, ValueError):  # empty or unreadable: the reader reports it
        return False
