"""``kb check``: verify a knowledge base on disk, and repair what the catalog can rebuild.

The catalog is the truth: it holds every document, chunk, vector and a copy of the manifest.
So a damaged keyword index, wrong chunk counts and a damaged or edited manifest are rebuilt
from it by ``--repair``. The vector store (the snapshot ``vectors.faiss``, or the knowledge
base's Milvus collection) is only a cache of it: one that is missing, damaged, stale or holds
other ids than the catalog's chunks is not a problem but a rebuild, which the check does and
saves at once when no writer is at work (listed under ``repaired``; ``ok`` stays true). A
damaged catalog is a problem: it is reported with what to do (restore a backup, or delete the
knowledge base and ingest again).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb_assistant.errors import CorruptKnowledgeBase, KnowledgeBaseError, KnowledgeBaseLocked
from kb_assistant.vectorstore.catalog import CATALOG_NAME, Catalog
from kb_assistant.vectorstore.files import hash_file
from kb_assistant.vectorstore.graph import GraphStore
from kb_assistant.vectorstore.knowledge_base import build_index, verify_identity, writer_lock
from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.vector_store import VectorBackend, VectorStore, VectorStoreConfig

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What ``kb check`` found. ``to_json`` gives the stable keys of ``kb check --json``."""

    kb: str
    documents: int = 0
    chunks: int = 0
    vectors: int | None = None
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, nothing wrong
    changed_sources: list[str] = field(default_factory=list)  # edited or gone since ingest

    @property
    def ok(self) -> bool:
        """True when nothing is wrong with the knowledge base itself."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form."""
        return {
            "kb": self.kb,
            "ok": self.ok,
            "documents": self.documents,
            "chunks": self.chunks,
            "vectors": self.vectors,
            "problems": self.problems,
            "repaired": self.repaired,
            "notes": self.notes,
            "changed_sources": self.changed_sources,
        }


def check(
    folder: Path,
    *,
    repair: bool = False,
    lock_timeout: float = 600.0,
    vectors: VectorStoreConfig | None = None,
) -> CheckReport:
    """Verify the knowledge base in ``folder``; with ``repair``, rebuild what can be rebuilt.

    A repair holds the writer lock, so it never races an ingest, and is checked again after:
    the report's ``problems`` are those that remain, ``repaired`` what was done. ``vectors``
    names the vector store in use (FAISS by default), which is compared with the catalog.

    Raises:
        KnowledgeBaseLocked: ``repair`` and another writer held the lock past the timeout.
    """
    vectors = vectors or VectorStoreConfig()
    if not repair:
        return _inspect(folder, vectors, locked=False)
    with writer_lock(folder, timeout=lock_timeout):
        done = _repair(folder)
        report = _inspect(folder, vectors, locked=True)
    report.repaired = done + report.repaired
    return report


def _inspect(folder: Path, vectors: VectorStoreConfig, *, locked: bool) -> CheckReport:
    report = CheckReport(kb=folder.name)
    try:
        catalog = Catalog(folder / CATALOG_NAME)
    except CorruptKnowledgeBase as exc:
        report.problems.append(f"{exc} (the catalog holds the documents: it cannot be rebuilt)")
        return report
    try:
        _inspect_catalog(folder, catalog, report, vectors, locked=locked)
    except CorruptKnowledgeBase as exc:
        report.problems.append(str(exc))
    finally:
        catalog.close()
    return report


def _inspect_catalog(
    folder: Path, catalog: Catalog, report: CheckReport, vectors: VectorStoreConfig, *, locked: bool
) -> None:
    damage = catalog.quick_check()
    if damage:
        report.problems.append(
            f"{catalog.path} is damaged ({'; '.join(damage[:3])}); restore it from a backup, "
            "or delete the knowledge base and ingest again"
        )
        return
    manifest = _manifest_problems(folder, catalog, report)
    dimension = manifest.dimension
    documents = catalog.documents()
    report.documents, report.chunks = len(documents), catalog.chunk_count()
    found = catalog.inconsistencies(dimension)
    if found["unfinished"]:
        report.problems.append(f"{len(found['unfinished'])} document(s) never finished ingesting")
    for _, source, recorded, actual in found["miscounted"]:
        report.problems.append(f"{source}: recorded as {recorded} chunks, has {actual}")
    if found["orphans"]:
        report.problems.append(f"{len(found['orphans'])} chunk(s) belong to no document")
    if found["bad_vectors"]:
        report.problems.append(
            f"{len(found['bad_vectors'])} chunk(s) have a vector that is not {dimension} numbers; "
            "remove their documents and ingest them again"
        )
    if found["unindexed"] or found["stray_keywords"]:
        report.problems.append(
            f"keyword index: {len(found['unindexed'])} chunk(s) missing, "
            f"{len(found['stray_keywords'])} entr(ies) of no chunk"
        )
    report.problems.extend(GraphStore(catalog).problems())
    if not found["bad_vectors"] and dimension > 0:
        backend = vectors.backend(folder, manifest)
        try:
            _refresh_vectors(folder, catalog, backend, report, locked=locked)
        except KnowledgeBaseError as exc:  # a Milvus server that is down: say so, go on
            report.problems.append(str(exc))
        finally:
            backend.close()
    for doc in documents:
        source = Path(doc.source)
        if not source.is_file():
            report.changed_sources.append(f"{doc.source} (gone)")
        elif hash_file(source)[1] != doc.sha256:
            report.changed_sources.append(f"{doc.source} (changed; 'kb ingest' updates it)")


def _manifest_problems(folder: Path, catalog: Catalog, report: CheckReport) -> Manifest:
    """Check the manifest against the catalog; returns the one that describes the stored
    vectors (the catalog's copy when the file is wrong; dimension 0 when nothing says)."""
    identity = catalog.identity()
    stored = catalog.stored_dimension()
    try:
        manifest = Manifest.read(folder)
        verify_identity(manifest, catalog, folder)
    except CorruptKnowledgeBase as exc:
        report.problems.append(str(exc))
    else:
        return manifest
    if identity is not None:
        return Manifest(**identity)  # type: ignore[arg-type]
    return Manifest(folder.name, "", stored or 0, 0, 0)


def _refresh_vectors(
    folder: Path, catalog: Catalog, backend: VectorBackend, report: CheckReport, *, locked: bool
) -> None:
    """Check the vector store against the catalog; rebuild and save one that is not a faithful
    copy (under the writer lock, taken here unless ``locked``)."""
    with catalog.snapshot():
        version = catalog.version()
        chunk_ids = catalog.chunk_ids()
        stale = _store_problem(backend, catalog, version, chunk_ids)
    if stale is None:
        report.vectors = len(chunk_ids)
        return
    try:
        with contextlib.nullcontext() if locked else writer_lock(folder, timeout=0):
            with catalog.snapshot():
                index = build_index(catalog, backend)
                version = catalog.version()
            report.vectors = index.count
            backend.save(index, version)
    except (KnowledgeBaseLocked, OSError) as exc:
        report.vectors = len(chunk_ids)  # what an open serves: rebuilt or replayed from the catalog
        report.notes.append(
            f"{backend.label}: {stale}; it is rebuilt from the catalog in memory, and "
            "saved by the writer at work now when it finishes"
            + ("" if isinstance(exc, KnowledgeBaseLocked) else f" (could not save: {exc})")
        )
        return
    report.repaired.append(
        f"rebuilt {backend.title} from the catalog ({stale}; {report.vectors} vectors)"
    )


def _store_problem(
    backend: VectorBackend, catalog: Catalog, version: int, chunk_ids: np.ndarray
) -> str | None:
    """Why the vector store is not a faithful copy of the catalog (None when it is)."""
    try:
        index, at = backend.load()
    except FileNotFoundError:
        return "it was missing" if len(chunk_ids) else None
    except CorruptKnowledgeBase as exc:
        return f"it was damaged ({str(exc).rpartition('(')[2].rstrip(')')})"
    if at > version:
        return f"it was newer than the catalog ({at} > {version})"
    if index.shared:  # not replayed here: only the writer changes a shared store
        return _shared_problem(index, at, version, chunk_ids)
    index.remove(catalog.removed_since(at))  # replay, as every open does
    for ids, vectors in catalog.embeddings(since_version=at):
        index.add(ids, vectors)
    problem = _id_problem(index.ids(), chunk_ids)
    if problem is None and at < version:
        return f"it was behind the catalog ({at} < {version})"
    return problem


def _shared_problem(index: VectorStore, at: int, version: int, chunk_ids: np.ndarray) -> str | None:
    """Compare a shared store (Milvus) with the catalog: counts first, then every id."""
    if at < version:
        return f"it was behind the catalog ({at} < {version})"
    count = index.count
    if count != len(chunk_ids):
        return f"it held {count} vectors for {len(chunk_ids)} chunks"
    return _id_problem(index.ids(), chunk_ids)


def _id_problem(held: np.ndarray, chunk_ids: np.ndarray) -> str | None:
    """How the replayed index's ids differ from the catalog's chunk ids (None: they agree)."""
    unique = np.unique(held)
    missing = np.setdiff1d(chunk_ids, unique, assume_unique=True)
    extra = np.setdiff1d(unique, chunk_ids, assume_unique=True)
    if len(unique) != len(held):
        return f"it held {len(held) - len(unique)} duplicate vector id(s)"
    if len(missing):
        return f"{len(missing)} chunk(s) had no vector"
    if len(extra):
        return f"{len(extra)} vector(s) belonged to no chunk"
    return None


def _repair(folder: Path) -> list[str]:
    """Rebuild from the catalog: manifest, catalog bookkeeping, keyword index, vector file."""
    try:
        catalog = Catalog(folder / CATALOG_NAME)
    except CorruptKnowledgeBase:
        return []  # reported by the check that follows; nothing here can rebuild it
    done: list[str] = []
    try:
        if catalog.quick_check():
            return []
        identity = catalog.identity()
        try:
            manifest = Manifest.read(folder)
            verify_identity(manifest, catalog, folder)
        except CorruptKnowledgeBase:
            if identity is None:
                return []  # no copy to restore from: reported by the check
            manifest = Manifest(**identity)  # type: ignore[arg-type]
            manifest.write(folder)
            done.append("restored manifest.json from the catalog's copy")
        done += catalog.repair(None if identity is not None else asdict(manifest))
    finally:
        catalog.close()
    return done
