"""``kb check``: verify a knowledge base on disk, and repair what the catalog can rebuild.

The catalog is the truth: it holds every document, chunk, vector and a copy of the manifest.
So a damaged or stale vector snapshot, a damaged keyword index, wrong chunk counts and a
damaged or edited manifest are all rebuilt from it. A damaged catalog is not: it is reported
with what to do (restore a backup, or delete the knowledge base and ingest again).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from errors import CorruptKnowledgeBase
from vectorstore.catalog import CATALOG_NAME, Catalog
from vectorstore.files import hash_file
from vectorstore.knowledge_base import build_index, verify_identity, writer_lock
from vectorstore.manifest import Manifest
from vectorstore.vector_index import INDEX_NAME, VectorIndex

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
        return _inspect(folder)
    with writer_lock(folder, timeout=lock_timeout):
        done = _repair(folder)
        report = _inspect(folder)
    report.repaired = done
    return report


def _inspect(folder: Path) -> CheckReport:
    report = CheckReport(kb=folder.name)
    try:
        catalog = Catalog(folder / CATALOG_NAME)
    except CorruptKnowledgeBase as exc:
        report.problems.append(f"{exc} (the catalog holds the documents: it cannot be rebuilt)")
        return report
    try:
        _inspect_catalog(folder, catalog, report)
    except CorruptKnowledgeBase as exc:
        report.problems.append(str(exc))
    finally:
        catalog.close()
    return report


def _inspect_catalog(folder: Path, catalog: Catalog, report: CheckReport) -> None:
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
    if not found["bad_vectors"]:
        _inspect_vectors(folder, catalog, dimension, report)
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


def _inspect_vectors(folder: Path, catalog: Catalog, dimension: int, report: CheckReport) -> None:
    path = folder / INDEX_NAME
    with catalog.snapshot():
        version = catalog.version()
        chunk_ids = catalog.chunk_ids()
        try:
            index, at = VectorIndex.load(path, dimension)
        except FileNotFoundError:
            report.vectors = 0
            if len(chunk_ids):
                report.problems.append(f"{path} is missing")
            return
        except CorruptKnowledgeBase as exc:
            report.problems.append(str(exc))
            return
        if at > version:
            report.problems.append(f"{path} is newer than the catalog ({at} > {version})")
            return
        index.remove(catalog.removed_since(at))  # replay, as every open does
        for ids, vectors in catalog.embeddings(since_version=at):
            index.add(ids, vectors)
    held = index.ids()
    report.vectors = len(held)
    unique = np.unique(held)
    missing = np.setdiff1d(chunk_ids, unique, assume_unique=True)
    extra = np.setdiff1d(unique, chunk_ids, assume_unique=True)
    if len(unique) != len(held):
        report.problems.append(f"{path}: {len(held) - len(unique)} duplicate vector id(s)")
    if len(missing):
        report.problems.append(f"{path}: {len(missing)} chunk(s) have no vector")
    if len(extra):
        report.problems.append(f"{path}: {len(extra)} vector(s) belong to no chunk")


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
        report = CheckReport(kb=folder.name)
        _inspect_vectors(folder, catalog, manifest.dimension, report)
        if report.problems:
            with catalog.snapshot():
                index = build_index(catalog, manifest.dimension)
                version = catalog.version()
            index.save(folder / INDEX_NAME, version)
            done.append(f"rebuilt {INDEX_NAME} from the catalog ({index.count} vectors)")
    finally:
        catalog.close()
    return done
