"""The seam between a knowledge base and the engine that searches its vectors.

The catalog keeps every vector; a vector store is a derived index of them, stamped with the
catalog version it reflects, so a missing, stale or damaged one is rebuilt or replayed from the
catalog, never trusted. Two engines implement it:

- ``faiss`` (the default): ``VectorIndex``, held in memory by each process and saved as the
  snapshot file ``vectors.faiss``; a process brings its own copy up to date by replay.
- ``milvus``: ``MilvusIndex``, one collection per knowledge base in Milvus Lite (a folder
  ``milvus.db`` inside the knowledge base) or on a Milvus server. It is ``shared``: every
  process searches the same collection, so only the writer (under the writer lock) changes it.

The setting picks the engine each time a knowledge base is opened; nothing in the knowledge
base pins it. Switching is safe because each store carries its own catalog version: the newly
chosen one is found missing or behind and is built or replayed from the catalog on open, so it
is never read empty or stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.vector_index import INDEX_NAME, VectorIndex

Batches = Iterable[tuple[np.ndarray, np.ndarray]]
StoreKind = Literal["faiss", "milvus"]


class VectorStore(Protocol):
    """Cosine search over unit vectors keyed by chunk id (what a knowledge base searches).

    ``shared`` is the capability flag: False for a copy private to this process (saved as a
    snapshot when the writer closes), True for a store every process reads live (its writes
    are visible at once, so it is stamped after each change and only the writer changes it).
    """

    dimension: int
    shared: bool

    @property
    def kind(self) -> str:
        """The index type, for messages and tests (``flat``, ``ivf``, ``milvus:FLAT`` …)."""
        ...

    @property
    def count(self) -> int:
        """Number of vectors held."""
        ...

    def ids(self) -> np.ndarray:
        """The chunk ids of every vector held (duplicates show as such)."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or, for a chunk id already held, replace) vectors under chunk ids."""
        ...

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the vectors of these chunk ids; returns how many were there (or asked)."""
        ...

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest chunk ids with their cosine similarity, best first."""
        ...

    def needs_rebuild(self) -> bool:
        """Whether the index type or its training no longer fits its size."""
        ...


class VectorBackend(Protocol):
    """Where one knowledge base's vector store lives, and how it is loaded, built and stamped."""

    label: str  # names the store in messages: a file path, or a collection and its server
    title: str  # a short name for reports: ``vectors.faiss``, ``Milvus collection 'kb_…'``
    dimension: int
    shared: bool

    def load(self) -> tuple[VectorStore, int]:
        """The stored index and the catalog version it reflects.

        Raises:
            FileNotFoundError: there is none yet.
            CorruptKnowledgeBase: it is damaged, unfinished, or of another dimension.
        """
        ...

    def build(
        self, count: int, batches: Batches, sample: Callable[[int], np.ndarray]
    ) -> VectorStore:
        """A new store of ``count`` vectors (replacing any stored one, for a shared store)."""
        ...

    def save(self, store: VectorStore, version: int) -> None:
        """Record that ``store`` reflects catalog ``version`` (after its vectors are written)."""
        ...

    def discard(self) -> None:
        """Delete the stored index (its vectors are about to change under it)."""
        ...

    def close(self) -> None:
        """Release the connection, if any (Milvus); the backend reconnects on next use."""
        ...


@dataclass(frozen=True)
class VectorStoreConfig:
    """Which vector store knowledge bases use (from settings, by the composition root)."""

    kind: StoreKind = "faiss"
    milvus_uri: str = ""  # empty: Milvus Lite in each knowledge base's folder
    milvus_token: str = field(default="", repr=False)

    def backend(self, folder: Path, manifest: Manifest) -> VectorBackend:
        """The backend of the knowledge base in ``folder`` described by ``manifest``.

        Raises:
            ConfigError: ``milvus`` is chosen but pymilvus is not installed.
        """
        if self.kind == "milvus":
            from kb_assistant.vectorstore.milvus_index import MilvusBackend

            return MilvusBackend(folder, manifest, uri=self.milvus_uri, token=self.milvus_token)
        return FaissBackend(folder, manifest.dimension)


class FaissBackend:
    """``vectors.faiss`` in the knowledge base's folder: a snapshot of a private index."""

    shared = False

    def __init__(self, folder: Path, dimension: int) -> None:
        self.path = folder / INDEX_NAME
        self.dimension = dimension
        self.label = str(self.path)
        self.title = INDEX_NAME

    def load(self) -> tuple[VectorStore, int]:
        """Read the snapshot (see ``VectorIndex.load``)."""
        return VectorIndex.load(self.path, self.dimension)

    def build(
        self, count: int, batches: Batches, sample: Callable[[int], np.ndarray]
    ) -> VectorStore:
        """A new in-memory index: flat, or IVF past ``IVF_FROM`` vectors."""
        return VectorIndex.build(self.dimension, count, batches, sample)

    def save(self, store: VectorStore, version: int) -> None:
        """Write the snapshot atomically, stamped with ``version``."""
        if not isinstance(store, VectorIndex):
            raise TypeError(f"{self.label} saves FAISS indexes, not {type(store).__name__}")
        store.save(self.path, version)

    def discard(self) -> None:
        """Delete the snapshot."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        """Nothing to release: the snapshot is read and written whole."""
