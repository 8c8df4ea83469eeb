"""``kb check``: verify a knowledge base on disk, and repair what the catalog can rebuild.

The catalog is the truth: it holds every document, chunk, vector and a copy of the manifest.
So a damaged keyword index, wrong chunk counts and a damaged or edited manifest are rebuilt
from it by ``--repair``. The vector snapshot (``vectors.faiss``) is only a cache of it: one that
is missing, damaged, stale or inconsistent is not a problem but a rebuild, which the check does
and saves at once when no writer is at work (listed under ``repaired``; ``ok`` stays true). A
damaged catalog is a problem: it is reported with what to do (restore a backup, or delete the
knowledge base and ingest again).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb_assistant.errors import CorruptKnowledgeBase
from kb_assistant.vectorstore.catalog import CATALOG_NAME, Catalog
from kb_assistant.vectorstore.files import hash_file
from kb_assistant.vectorstore.graph import GraphStore
from kb_assistant.vectorstore.knowledge_base import (
    LoadedIndex,
    build_index,
    save_snapshot,
    verify_identity,
    writer_lock,
)
from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.vector_index import INDEX_NAME, VectorIndex

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


def check(folder: Path, *, repair: bool = False, lock_timeout: float = 600.0) -> CheckReport:
    """Verify the knowledge base in ``folder``; with ``repair``, rebuild what can be rebuilt.

    A repair holds the writer lock, so it never races an ingest, and is checked again after:
    the report's ``problems`` are those that remain, ``repaired`` what was done.

    Raises:
        KnowledgeBaseLocked: ``repair`` and another writer held the lock past the timeout.
    """
    if not repair:
        return _inspect(folder, locked=False)
    with writer_lock(folder, timeout=lock_timeout):
        done = _repair(folder)
        report = _inspect(folder, locked=True)
    report.repaired = done + report.repaired
    return report


def _inspect(folder: Path, *, locked: bool) -> CheckReport:
    report = CheckReport(kb=folder.name)
    try:
        catalog = Catalog(folder / CATALOG_NAME)
    except CorruptKnowledgeBase as exc:
        report.problems.append(f"{exc} (the catalog holds the documents: it cannot be rebuilt)")
        return report
    try:
        _inspect_catalog(folder, catalog, report, locked=locked)
    except CorruptKnowledgeBase as exc:
        report.problems.append(str(exc))
    finally:
        catalog.close()
    return report


def _inspect_catalog(folder: Path, catalog: Catalog, report: CheckReport, *, locked: bool) -> None:
    damage = catalog.quick_check()
    if damage:
        report.problems.append(
            f"{catalog.path} is damaged ({'; '.join(damage[:3])}); restore it from a backup, "
            "or delete the knowledge base and ingest again"
        )
        return
    dimension = _manifest_problems(folder, catalog, report)
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
    if not found["bad_vectors"]:
        _refresh_vectors(folder, catalog, dimension, report, locked=locked)
    for doc in documents:
        source = Path(doc.source)
        if not source.is_file():
            report.changed_sources.append(f"{doc.source} (gone)")
        elif hash_file(source)[1] != doc.sha256:
            report.changed_sources.append(f"{doc.source} (changed; 'kb ingest' updates it)")


def _manifest_problems(folder: Path, catalog: Catalog, report: CheckReport) -> int:
    """Check the manifest against the catalog; returns the dimension the vectors have."""
    identity = catalog.identity()
    stored = catalog.stored_dimension()
    try:
        manifest = Manifest.read(folder)
        verify_identity(manifest, catalog, folder)
    except CorruptKnowledgeBase as exc:
        report.problems.append(str(exc))
    else:
        return manifest.dimension
    if identity is not None:
        return int(str(identity["dimension"]))
    return stored or 0


def _refresh_vectors(
    folder: Path, catalog: Catalog, dimension: int, report: CheckReport, *, locked: bool
) -> None:
    """Check the vector snapshot against the catalog; rebuild and save one that is not a
    faithful copy (under the writer lock, taken here unless ``locked``)."""
    if dimension <= 0:
        return  # no manifest, no identity, no vectors: nothing to build (reported above)
    with catalog.snapshot():
        version = catalog.version()
        chunk_ids = catalog.chunk_ids()
        stale = _snapshot_problem(folder / INDEX_NAME, catalog, dimension, version, chunk_ids)
        if stale is None:
            report.vectors = len(chunk_ids)
            return
        index = build_index(catalog, dimension)
    report.vectors = index.count
    loaded = LoadedIndex(index, version, stale)
    if save_snapshot(catalog, folder, loaded, locked=locked):
        report.repaired.append(
            f"rebuilt {INDEX_NAME} from the catalog ({stale}; {index.count} vectors)"
        )
    else:
        report.notes.append(
            f"{folder / INDEX_NAME}: {stale}; it is rebuilt from the catalog in memory, and "
            "saved by the writer at work now when it finishes"
        )


def _snapshot_problem(
    path: Path, catalog: Catalog, dimension: int, version: int, chunk_ids: np.ndarray
) -> str | None:
    """Why ``vectors.faiss`` is not a faithful copy of the catalog (None when it is)."""
    try:
        index, at = VectorIndex.load(path, dimension)
    except FileNotFoundError:
        return "it was missing" if len(chunk_ids) else None
    except CorruptKnowledgeBase as exc:
        return f"it was damaged ({str(exc).rpartition('(')[2].rstrip(')')})"
    if at > version:
        return f"it was newer than the catalog ({at} > {version})"
    index.remove(catalog.removed_since(at))  # replay, as every open does
    for ids, vectors in catalog.embeddings(since_version=at):
        index.add(ids, vectors)
    problem = _id_problem(index.ids(), chunk_ids)
    if problem is None and at < version:
        return f"it was behind the catalog ({at} < {version})"
    return problem


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
