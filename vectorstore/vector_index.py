"""The FAISS index of a knowledge base, keyed by chunk id, and its snapshot file.

``vectors.faiss`` is a FAISS index written by ``faiss.write_index`` behind a small header
(format, catalog version, vector count, dimension, SHA-256 of the index bytes). The header lets
an open tell a damaged file (checksum) or a stale one (version behind the catalog) from a good
one; the catalog keeps every vector too, so either case is repaired from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from errors import CorruptKnowledgeBase
from vectorstore.files import atomic_writer

MAGIC = b"KBVECTORS\n"
HEADER_BYTES = 512  # JSON, space-padded: written after the body, once the checksum is known
FORMAT = 2
INDEX_NAME = "vectors.faiss"


class VectorIndex:
    """Exact inner-product search over unit vectors (cosine), ids = chunk ids."""

    def __init__(self, dimension: int, index: Any = None) -> None:
        import faiss

        self.dimension = dimension
        if index is None:
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
        self._index: Any = index

    @property
    def count(self) -> int:
        """Number of vectors held."""
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given chunk ids."""
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the vectors of these chunk ids; returns how many were there."""
        if not len(ids):
            return 0
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest chunk ids with their cosine similarity, best first."""
        if self.count == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = self._index.search(query, min(k, self.count))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def save(self, path: Path, version: int) -> None:
        """Write the snapshot atomically, stamped with the catalog version it reflects.

        The index is streamed to disk (no second copy in memory: at 10^6 chunks that would be
        1.5 GB); the header, which needs the checksum, is written last into its reserved slot.
        """
        import faiss

        digest = hashlib.sha256()
        with atomic_writer(path) as fh:
            fh.write(MAGIC + b" " * HEADER_BYTES)

            def write(block: bytes) -> int:
                digest.update(block)
                return fh.write(block)

            faiss.write_index(self._index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]
            header = {
                "format": FORMAT, "version": version, "count": self.count,
                "dimension": self.dimension, "sha256": digest.hexdigest(),
            }  # fmt: skip
            fh.seek(len(MAGIC))
            fh.write(json.dumps(header).encode().ljust(HEADER_BYTES))

    @classmethod
    def load(cls, path: Path, dimension: int) -> tuple[VectorIndex, int]:
        """Read a snapshot; returns the index and the catalog version it reflects.

        Raises:
            FileNotFoundError: there is no snapshot yet.
            CorruptKnowledgeBase: the file is damaged, truncated or of another dimension.
        """
        import faiss

        with path.open("rb") as fh:
            try:
                if fh.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a kb-assistant vector file")
                header = json.loads(fh.read(HEADER_BYTES))
                if header["format"] != FORMAT or header["dimension"] != dimension:
                    raise ValueError(f"format {header['format']}, dimension {header['dimension']}")
                body = fh.tell()
                digest = hashlib.sha256()
                while block := fh.read(1 << 20):
                    digest.update(block)
                if digest.hexdigest() != header["sha256"]:
                    raise ValueError("checksum mismatch")
                fh.seek(body)
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))  # type: ignore[attr-defined]
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CorruptKnowledgeBase(f"{path} is damaged ({exc})") from exc
        if int(index.ntotal) != header["count"]:
            raise CorruptKnowledgeBase(f"{path} is damaged (vector count differs from header)")
        return cls(dimension, index), int(header["version"])
