"""One knowledge base on disk: manifest + catalog (truth) + vector store (FAISS snapshot or
Milvus collection: a derived index, stamped with the catalog version it reflects).

Readers never wait for a lock: SQLite's WAL gives each read a committed state, and the FAISS
snapshot is replaced by rename. One writer at a time holds ``.write.lock``; every document is
written in its own SQLite transaction, and its vectors reach the vector store only after that
commits, so a killed ingest leaves the knowledge base as it was before the interrupted document
(a Milvus collection it had already updated is replayed to the catalog on the next open).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kb_assistant.errors import (
    CorruptKnowledgeBase,
    KBError,
    KnowledgeBaseError,
    KnowledgeBaseLocked,
)
from kb_assistant.vectorstore.catalog import (
    CATALOG_NAME,
    Catalog,
    ChunkRecord,
    DocumentRecord,
    NewChunk,
)
from kb_assistant.vectorstore.manifest import MANIFEST_NAME, Manifest
from kb_assistant.vectorstore.vector_store import (
    FaissBackend,
    VectorBackend,
    VectorStore,
    VectorStoreConfig,
)

logger = logging.getLogger(__name__)
LOCK_NAME = ".write.lock"


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk.

    ``score`` is what ranked it: the cosine similarity for dense search, the fused
    reciprocal-rank score for hybrid search (whose parts are ``dense_score``, the cosine, and
    ``keyword_score``, BM25; None where that ranker did not find the chunk).
    """

    rank: int
    score: float
    chunk: ChunkRecord
    dense_score: float | None = None
    keyword_score: float | None = None
    graph: tuple[str, ...] = ()  # the knowledge-graph facts that ranked it (hybrid+graph)


@dataclass(frozen=True)
class LoadedIndex:
    """The vector store as of a catalog version, and why it needs saving again (None: it
    already reflects that version). A shared store brought up to date is stamped at once
    (``saved``); a private one is saved by ``save_snapshot``."""

    index: VectorStore
    version: int
    stale: str | None = None
    saved: bool = False


def load_index(
    catalog: Catalog, folder: Path, backend: VectorBackend, *, locked: bool = False
) -> LoadedIndex:
    """The vector store as of the catalog's current version: stored copy + replay, or a rebuild.

    The store is a cache of the catalog: a missing, damaged, newer or older one costs a rebuild
    or a replay, never data, and ``stale`` says which. A private store (FAISS) is replayed in
    this process's memory. A shared one (Milvus) is changed only under the writer lock: held by
    the caller (``locked``), or taken here if free; if a writer holds it, the writer keeps the
    store in step with its commits, and it is served as it is.
    """
    if not backend.shared or locked:
        return _synced(catalog, backend)
    version = catalog.version()
    store: VectorStore | None = None
    with contextlib.suppress(FileNotFoundError, CorruptKnowledgeBase):
        store, at = backend.load()
        if at == version and store.count == catalog.chunk_count():
            return LoadedIndex(store, version)
    try:
        with writer_lock(folder, timeout=0):
            return _synced(catalog, backend)
    except KnowledgeBaseLocked:
        if store is not None:
            return LoadedIndex(store, version)  # the writer at work brings it up to date
    # Nothing to serve and a writer (a rebuild, a reindex) at work: search a private copy.
    logger.warning("%s is being rebuilt; searching a copy made from the catalog", backend.label)
    with catalog.snapshot():
        copy = build_index(catalog, FaissBackend(folder, backend.dimension))
        return LoadedIndex(copy, catalog.version())  # never saved: the writer owns the store


def _synced(catalog: Catalog, backend: VectorBackend) -> LoadedIndex:
    """Load, replay and if need be rebuild the store (for a shared one, under the lock)."""
    with catalog.snapshot():
        version = catalog.version()
        index: VectorStore | None = None
        stale: str | None = "it was missing"
        at = -1
        try:
            index, at = backend.load()
            stale = None
        except FileNotFoundError:
            pass
        except CorruptKnowledgeBase as exc:
            logger.warning("%s; rebuilt from the catalog (nothing is lost)", exc)
            stale = "it was damaged"
        if index is not None and at > version:
            logger.warning("%s is newer than the catalog; rebuilding it", backend.label)
            index, stale = None, "it was newer than the catalog"
        elif index is not None and at < version:
            stale = "it was behind the catalog"
        if index is not None:
            index.remove(catalog.removed_since(at))
            for ids, vectors in catalog.embeddings(since_version=at):
                index.add(ids, vectors)
        if index is None or index.count != catalog.chunk_count():
            if index is not None:
                logger.warning("%s disagrees with the catalog; rebuilding it", backend.label)
                stale = "it disagreed with the catalog"
            index = None  # freed before the new one is built: at 10^6 chunks each is 1.5 GB
            index = build_index(catalog, backend)
    saved = False
    if backend.shared and stale is not None:
        backend.save(index, version)
        saved = True
    if stale == "it was missing" and index.count == 0:
        stale = None  # a new, empty knowledge base: nothing to save yet
    return LoadedIndex(index, version, stale, saved)


def save_snapshot(
    catalog: Catalog,
    folder: Path,
    backend: VectorBackend,
    loaded: LoadedIndex,
    *,
    locked: bool = False,
) -> bool:
    """Save a stale store again, if the writer lock is free right now (or the caller holds
    it: ``locked``) and nothing was committed since ``loaded`` was read; returns whether it was
    saved.

    The first open that can take the lock does it, so a killed first ingest costs one
    rebuild, not one per open. A writer at work saves its own snapshot when it finishes.
    """
    if loaded.stale is None or loaded.saved:
        return False
    try:
        with contextlib.nullcontext() if locked else writer_lock(folder, timeout=0):
            if catalog.version() != loaded.version:
                return False  # a writer committed meanwhile and saved a newer snapshot
            backend.save(loaded.index, loaded.version)
    except KnowledgeBaseLocked:
        return False
    except (OSError, KnowledgeBaseError) as exc:  # a read-only folder: keep serving from memory
        logger.warning("could not save %s (%s)", backend.label, exc)
        return False
    logger.info("saved %s (%s)", backend.label, loaded.stale)
    return True


def build_index(catalog: Catalog, backend: VectorBackend) -> VectorStore:
    """A new store of every chunk in the catalog (the caller holds a snapshot)."""
    return backend.build(catalog.chunk_count(), catalog.embeddings(), catalog.sample_embeddings)


@contextmanager
def writer_lock(
    folder: Path, *, timeout: float = 600.0, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold the writer lock of the knowledge base in ``folder`` for the block.

    Args:
        timeout: seconds to wait for another writer to finish.
        on_wait: called once if the lock is busy, so the caller can say it waits.

    Raises:
        KnowledgeBaseLocked: the lock was not free within ``timeout``.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        try:
            lock.acquire(timeout=timeout)
        except Timeout as exc:
            raise KnowledgeBaseLocked(
                f"knowledge base '{folder.name}' is being written by another process "
                f"(waited {timeout:.0f} s); try again when it has finished"
            ) from exc
    try:
        yield
    finally:
        lock.release()


def verify_identity(manifest: Manifest, catalog: Catalog, folder: Path) -> None:
    """Refuse a manifest that does not describe the vectors stored in the catalog.

    The catalog keeps a copy of the manifest it was created with, and every stored vector's
    length is its dimension. An edited manifest, or one copied from another knowledge base,
    would have queries embedded by one model searched against vectors of another: nonsense
    results that look like answers.

    Raises:
        CorruptKnowledgeBase: naming both sides, and the repair.
    """
    recorded = catalog.identity()
    stored = catalog.stored_dimension()
    facts = None
    if recorded is not None and (
        recorded.get("embedding_model") != manifest.embedding_model
        or recorded.get("dimension") != manifest.dimension
    ):
        facts = f"'{recorded.get('embedding_model')}' ({recorded.get('dimension')} dimensions)"
    elif stored is not None and stored != manifest.dimension:
        facts = f"a model of {stored} dimensions"
    if facts is None:
        return
    raise CorruptKnowledgeBase(
        f"{folder / MANIFEST_NAME} names embedding model '{manifest.embedding_model}' "
        f"({manifest.dimension} dimensions) but the vectors in its catalog were made by {facts}; "
        "the manifest was edited or copied from another knowledge base. It is not served this "
        f"way: 'kb check --kb {folder.name} --repair' restores the manifest from the catalog"
    )


NEXT_MANIFEST = MANIFEST_NAME + ".next"


def _model(identity: dict[str, object]) -> tuple[object, object]:
    return identity.get("embedding_model"), identity.get("dimension")


def current_manifest(folder: Path, catalog: Catalog) -> Manifest:
    """The manifest, verified against the catalog; a ``kb reindex`` that committed its new
    vectors but was stopped before renaming its new manifest into place is finished here.

    Raises:
        CorruptKnowledgeBase: the manifest does not describe the stored vectors.
    """
    manifest = Manifest.read(folder)
    recorded = catalog.identity()
    pending = folder / NEXT_MANIFEST
    if recorded is not None and _model(recorded) != _model(asdict(manifest)) and pending.is_file():
        with contextlib.suppress(CorruptKnowledgeBase):
            if _model(asdict(Manifest.read(folder, NEXT_MANIFEST))) == _model(recorded):
                with contextlib.suppress(FileNotFoundError):  # another process finished it
                    pending.replace(folder / MANIFEST_NAME)
                manifest = Manifest.read(folder)
    verify_identity(manifest, catalog, folder)
    return manifest


class KnowledgeBase:
    """Read access to one knowledge base, and the door to its single writer."""

    def __init__(self, folder: Path, vectors: VectorStoreConfig | None = None) -> None:
        self.folder = folder
        self.vectors = vectors or VectorStoreConfig()
        self.catalog = Catalog(folder / CATALOG_NAME)
        try:
            self.manifest = current_manifest(folder, self.catalog)
            self.backend = self.vectors.backend(folder, self.manifest)
        except BaseException:
            self.catalog.close()
            raise
        self._index: VectorStore | None = None
        self._index_version = -1
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The knowledge base's name."""
        return self.folder.name

    def close(self) -> None:
        """Release the catalog and the vector store's connection (Milvus)."""
        self.catalog.close()
        self.backend.close()

    def documents(self) -> list[DocumentRecord]:
        """All documents, oldest first."""
        return self.catalog.documents()

    def refresh(self) -> Manifest:
        """The manifest as of now: re-read when the catalog records another embedding model
        (a ``kb reindex`` in this or another process)."""
        recorded = self.catalog.identity()
        if recorded is not None and _model(recorded) != _model(asdict(self.manifest)):
            with self._lock:
                self.manifest = current_manifest(self.folder, self.catalog)
                self._index = None
                self.backend.close()
                self.backend = self.vectors.backend(self.folder, self.manifest)
        return self.manifest

    def switch_embeddings(
        self, manifest: Manifest, batches: Iterable[tuple[list[int], np.ndarray]]
    ) -> None:
        """Replace every vector and the manifest at once (the caller holds the writer lock).

        The new manifest is written beside the old one first; the vectors and the catalog's
        copy of the manifest then change in one SQLite transaction; the manifest is renamed
        into place last. Stopped before the commit, the knowledge base is as it was; after it,
        the next open finishes the rename (``current_manifest``).

        The vector store, a cache, is rebuilt from the catalog after the commit. A shared one
        (Milvus) keeps serving the old vectors to readers until then: the new model's store is
        another collection when the dimension differs (the old one is dropped after the
        commit), or the same alias, moved by the rebuild, whose collections record the model
        they were built for, so the old one is never served for the new model. A private
        snapshot (FAISS) is one file for both models, and replay cannot tell old vectors from
        new ones: it is deleted before the commit (each reader keeps its copy in memory).
        A store that fails after the commit is only logged: the next open rebuilds it.
        """
        manifest.write(self.folder, NEXT_MANIFEST)
        backend = self.vectors.backend(self.folder, manifest)
        separate = backend.shared and backend.label != self.backend.label
        writer: Catalog | None = None
        try:
            if separate:
                backend.discard()  # left by an earlier model of this dimension; nobody reads it
            elif not backend.shared:
                self.backend.discard()
            writer = Catalog(self.folder / CATALOG_NAME)
            writer.replace_embeddings(asdict(manifest), batches)
            (self.folder / NEXT_MANIFEST).replace(self.folder / MANIFEST_NAME)
        except BaseException:
            if writer is not None:
                writer.close()
            backend.close()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / NEXT_MANIFEST).unlink()  # left only when the commit failed
        try:
            with writer.snapshot():
                index = build_index(writer, backend)
                version = writer.version()
            backend.save(index, version)
        except (OSError, KBError) as exc:  # committed all the same
            logger.warning(
                "%s was not built (%s); it is rebuilt from the catalog on the next open",
                backend.label, exc,
            )  # fmt: skip
        finally:
            writer.close()
            with self._lock:
                self.manifest = manifest
                self._index = None
                old, self.backend = self.backend, backend
        try:
            if separate:
                old.discard()  # only now: readers searched it until the commit
        except KBError as exc:
            logger.warning(
                "could not drop %s, the previous model's store (%s); drop it by hand",
                old.label, exc,
            )  # fmt: skip
        finally:
            old.close()

    def index(self) -> VectorStore:
        """The current vector store, reloaded when another process has committed changes."""
        with self._lock:
            version = self.catalog.version()
            if self._index is None or version != self._index_version:
                loaded = load_index(self.catalog, self.folder, self.backend)
                save_snapshot(self.catalog, self.folder, self.backend, loaded)
                self._index, self._index_version = loaded.index, loaded.version
            return self._index

    def search(self, vector: np.ndarray, k: int) -> list[SearchHit]:
        """The ``k`` chunks nearest to a query vector."""
        index = self.index()
        # A vector whose chunk a concurrent writer just removed has no row: ask for spares.
        found = index.search(vector, k + 8)
        rows = self.catalog.chunks_by_ids(i for i, _ in found)
        hits = [(rows[i], score) for i, score in found if i in rows][:k]
        return [SearchHit(rank, s, chunk, s) for rank, (chunk, s) in enumerate(hits, 1)]

    def keyword_search(self, terms: list[str], k: int) -> list[tuple[int, float]]:
        """Chunk ids and BM25 scores for query terms (see ``keywords.query_terms``)."""
        return self.catalog.keyword_search(terms, k)

    @contextmanager
    def locked(
        self, *, timeout: float = 600.0, on_wait: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold the writer lock for the duration of the block (see ``writer_lock``)."""
        with writer_lock(self.folder, timeout=timeout, on_wait=on_wait):
            yield

    @contextmanager
    def writer(
        self, *, timeout: float = 600.0, on_wait: Callable[[], None] | None = None
    ) -> Iterator[KnowledgeBaseWriter]:
        """The single writer, under the lock (see ``locked``)."""
        with self.locked(timeout=timeout, on_wait=on_wait):
            writer = KnowledgeBaseWriter(self)
            try:
                yield writer
            finally:
                writer.close()
                with self._lock:
                    self._index = None  # the next read reloads the committed state


class KnowledgeBaseWriter:
    """Writes documents one transaction each; keeps the vector store in step (a shared one is
    stamped after each commit, a private one's snapshot is saved when done)."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.backend = kb.backend
        self.catalog = Catalog(kb.folder / CATALOG_NAME)
        if self.catalog.identity() is None:  # a catalog from before identities were recorded
            self.catalog.record_identity(asdict(kb.manifest))
        loaded = load_index(self.catalog, kb.folder, self.backend, locked=True)
        self.index = loaded.index
        self._version: int | None = None
        self._doc_id: int | None = None
        self._ordinal = 0
        self._replaced: list[int] = []
        self.changed = loaded.stale is not None and not loaded.saved  # saved on close too
        self._behind = False  # set when the store failed to follow a commit

    def cached_vectors(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Vectors already stored for chunks with these embedded-text hashes."""
        found = self.catalog.cached_embeddings(hashes)
        return {h: np.frombuffer(v, dtype=np.float32) for h, v in found.items()}

    def begin_document(self, source: str, name: str, sha256: str, size: int, fmt: str) -> int:
        """Open the transaction of one document (replacing a previous version of it)."""
        if self._version is not None:
            raise RuntimeError("a document is already open")
        self._version = self.catalog.begin()
        self._doc_id, self._replaced = self.catalog.put_document(
            source, name=name, sha256=sha256, size=size, fmt=fmt, version=self._version
        )
        self._ordinal = 0
        return self._doc_id

    def add_chunks(self, chunks: list[NewChunk], vectors: np.ndarray) -> None:
        """Store chunks of the open document."""
        if self._doc_id is None or self._version is None:
            raise RuntimeError("no document is open")
        self.catalog.add_chunks(self._doc_id, self._version, chunks, vectors)
        self._ordinal += len(chunks)

    @property
    def next_ordinal(self) -> int:
        """Ordinal of the next chunk of the open document."""
        return self._ordinal

    def commit_document(self, pages: int | None, notes: list[str]) -> int:
        """Commit the open document; returns its chunk count."""
        if self._doc_id is None or self._version is None:
            raise RuntimeError("no document is open")
        self.catalog.finish_document(self._doc_id, self._ordinal, pages, notes)
        self.catalog.commit()
        # Only now, with the rows durable, do the vectors join the index. They are read back
        # from the catalog rather than held since the document began: a 200 MB text file has
        # hundreds of thousands of chunks.
        version, count, replaced = self._version, self._ordinal, self._replaced
        self._reset()

        def update() -> None:
            self.index.remove(replaced)
            for ids, vectors in self.catalog.embeddings(since_version=version - 1):
                self.index.add(ids, vectors)

        self._follow(version, update)
        return count

    def _follow(self, version: int, update: Callable[[], None]) -> None:
        """Bring the store in step with the commit of ``version``: a shared store is stamped
        at once (other processes search it live), a private one is saved on close.

        The commit stands whatever happens here, so a store failure (Milvus went away, memory
        ran out) is logged, not raised: the document is stored. From then on the store is left
        alone for the rest of this session, never stamped past the last version it fully
        reflects, and the next open replays everything since from the catalog (idempotently).
        """
        self.changed = True
        if self._behind:
            return
        try:
            update()
            if self.index.shared:
                self.backend.save(self.index, version)
        except Exception as exc:
            self._behind = True
            logger.warning(
                "%s did not follow catalog version %d (%s); the catalog has it, and the store "
                "is caught up from the catalog on the next open",
                self.backend.label, version, exc,
            )  # fmt: skip
        except BaseException:
            self._behind = True
            raise

    def needs_rebuild(self) -> bool:
        """Whether closing will rebuild the store (its type no longer fits its size): never for
        a store that fell behind, which is not touched again in this session."""
        if not self.changed or self._behind:
            return False
        try:
            return self.index.needs_rebuild()
        except KBError as exc:
            logger.warning("could not ask %s its size (%s)", self.backend.label, exc)
            return False

    def abort_document(self) -> None:
        """Roll back the open document, leaving the previous state."""
        self.catalog.rollback()
        self._reset()

    def remove_document(self, doc_id: int) -> int:
        """Delete a document's row, chunks and vectors; returns how many chunks it had."""
        version = self.catalog.begin()
        try:
            removed = self.catalog.delete_document(doc_id, version)
            self.catalog.commit()
        except BaseException:
            self.catalog.rollback()
            raise

        def update() -> None:
            self.index.remove(removed)

        self._follow(version, update)
        return len(removed)

    def rebuild_index(self) -> None:
        """Rebuild the vector store from the catalog (type chosen by size); saved on close, or
        (shared) stamped at once.

        The old index is freed first, so the two never sit in memory together.
        """
        del self.index
        with self.catalog.snapshot():
            self.index = build_index(self.catalog, self.backend)
            self.changed = True
            self._behind = False  # every vector, as of this version
            if self.index.shared:
                self.backend.save(self.index, self.catalog.version())

    def _reset(self) -> None:
        self._version = self._doc_id = None
        self._replaced = []
        self._ordinal = 0

    def close(self) -> None:
        """Roll back anything open and save the snapshot if something was committed."""
        if self._version is not None:
            self.abort_document()
        try:
            if self.needs_rebuild():
                self.rebuild_index()  # flat -> IVF past the threshold, or retrained
            if self.changed and not self.index.shared and not self._behind:
                self.backend.save(self.index, self.catalog.version())
        except (OSError, KBError) as exc:
            if not self.backend.shared:
                # A snapshot file this machine cannot write (a full disk) is the user's to know;
                # the old file is intact and the committed rows stay (tests/test_crashes.py).
                raise
            # A server store that went away: what was committed stays committed, and the store
            # is caught up from the catalog on the next open, so the ingest is not an error.
            logger.warning(
                "could not bring %s up to date (%s); it is caught up from the catalog on the "
                "next open",
                self.backend.label, exc,
            )  # fmt: skip
        finally:
            self.catalog.close()
