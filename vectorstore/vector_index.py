"""The FAISS index of a knowledge base, keyed by chunk id, and its snapshot file.

``vectors.faiss`` is a FAISS index serialised by ``faiss.serialize_index`` behind a small header
(format, catalog version, vector count, dimension, SHA-256 of the index bytes). The header lets
an open tell a damaged file (checksum) or a stale one (version behind the catalog) from a good
one; the catalog keeps every vector too, so either case is repaired from it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from errors import CorruptKnowledgeBase
from vectorstore.files import atomic_write_bytes

MAGIC = b"KBVECTORS\n"
FORMAT = 1
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
        """Write the snapshot atomically, stamped with the catalog version it reflects."""
        import faiss

        body = faiss.serialize_index(self._index).data  # a buffer over the bytes, no copy
        header = json.dumps(
            {
                "format": FORMAT,
                "version": version,
                "count": self.count,
                "dimension": self.dimension,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        atomic_write_bytes(path, MAGIC, struct.pack("<I", len(header)), header, body)

    @classmethod
    def load(cls, path: Path, dimension: int) -> tuple[VectorIndex, int]:
        """Read a snapshot; returns the index and the catalog version it reflects.

        Raises:
            FileNotFoundError: there is no snapshot yet.
            CorruptKnowledgeBase: the file is damaged, truncated or of another dimension.
        """
        import faiss

        data = path.read_bytes()
        try:
            if not data.startswith(MAGIC):
                raise ValueError("not a kb-assistant vector file")
            (size,) = struct.unpack_from("<I", data, len(MAGIC))
            start = len(MAGIC) + 4
            header = json.loads(data[start : start + size])
            body = memoryview(data)[start + size :]
            if header["format"] != FORMAT or header["dimension"] != dimension:
                raise ValueError(f"format {header['format']}, dimension {header['dimension']}")
            if hashlib.sha256(body).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
        except (ValueError, KeyError, struct.error, RuntimeError) as exc:
            raise CorruptKnowledgeBase(f"{path} is damaged ({exc})") from exc
        if int(index.ntotal) != header["count"]:
            raise CorruptKnowledgeBase(f"{path} is damaged (vector count differs from header)")
        return cls(dimension, index), int(header["version"])
