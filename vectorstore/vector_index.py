"""The FAISS index of a knowledge base, keyed by chunk id, and its snapshot file.

``vectors.faiss`` is a FAISS index written by ``faiss.write_index`` behind a small header
(format, catalog version, vector count, dimension, SHA-256 of the index bytes). The header lets
an open tell a damaged file (checksum) or a stale one (version behind the catalog) from a good
one; the catalog keeps every vector too, so either case is repaired from it.

Search is exact (a flat index) up to ``IVF_FROM`` vectors: one query over 10^5 vectors takes
about 6 ms on two cores. Past it, the index is an inverted file (IVF): the vectors are grouped
around ``nlist`` k-means centroids and a query scans the ``nprobe`` nearest groups only (one
query over 10^6 vectors: ~85 ms flat, a few ms IVF; recall against exact search is measured by
``bench/retrieval_scale.py``). The centroids are trained on a sample of the vectors and
retrained when the index has grown fourfold or shrunk below half the threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kb_assistant.errors import CorruptKnowledgeBase
from kb_assistant.vectorstore.files import atomic_writer

IVF_FROM = 200_000  # vectors; below this, exact search
PROBE_SHARE = 8  # a query scans 1/8 of the inverted lists (recall@10 0.97 at 10^6)
MAGIC = b"KBVECTORS\n"
HEADER_BYTES = 512  # JSON, space-padded: written after the body, once the checksum is known
FORMAT = 2
INDEX_NAME = "vectors.faiss"


def inverted_lists(count: int) -> int:
    """How many inverted lists (centroids) an IVF index of ``count`` vectors gets."""
    return int(min(4096, max(16, 2 ** round(np.log2(max(1, count) ** 0.5)))))


Batches = Iterable[tuple[np.ndarray, np.ndarray]]


class VectorIndex:
    """Inner-product search over unit vectors (cosine), ids = chunk ids; flat or IVF.

    A ``VectorStore`` private to its process (``shared`` False): saved as a snapshot file.
    """

    shared = False

    def __init__(self, dimension: int, index: Any = None, trained_for: int = 0) -> None:
        import faiss

        self.dimension = dimension
        if index is None:
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
        if hasattr(index, "nprobe"):  # IVF: set here, so a loaded snapshot follows the rule too
            index.nprobe = max(1, index.nlist // PROBE_SHARE)
        self._index: Any = index
        self.trained_for = trained_for  # vectors when the IVF centroids were trained

    @classmethod
    def build(
        cls, dimension: int, count: int, batches: Batches, sample: Callable[[int], np.ndarray]
    ) -> VectorIndex:
        """A new index for ``count`` vectors: flat below ``IVF_FROM``, else IVF.

        Args:
            batches: every ``(ids, vectors)`` to add.
            sample: returns up to n of the vectors, for training the IVF centroids.
        """
        import faiss

        if count < IVF_FROM:
            index = cls(dimension)
        else:
            nlist = inverted_lists(count)
            ivf = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(dimension), dimension, nlist, faiss.METRIC_INNER_PRODUCT
            )
            ivf.train(np.ascontiguousarray(sample(64 * nlist), dtype=np.float32))
            index = cls(dimension, ivf, trained_for=count)
        for ids, vectors in batches:
            index.add(ids, vectors)
        return index

    def needs_rebuild(self) -> bool:
        """Whether the index type or its training no longer fits its size."""
        if self.kind == "flat":
            return self.count >= IVF_FROM
        return self.count < IVF_FROM // 2 or self.count > 4 * self.trained_for

    @property
    def kind(self) -> str:
        """``flat`` (exact search) or ``ivf`` (inverted lists, for large knowledge bases)."""
        return "ivf" if "IVF" in type(self._index).__name__ else "flat"

    @property
    def count(self) -> int:
        """Number of vectors held."""
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """The chunk ids of every vector held (in index order; duplicates show as such)."""
        import faiss

        index = self._index
        if hasattr(index, "id_map"):  # flat: IndexIDMap keeps the ids in one array
            return np.asarray(faiss.vector_to_array(index.id_map), dtype=np.int64)
        lists = index.invlists  # IVF: each inverted list keeps its own ids
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

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
                "trained_for": self.trained_for,
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
        return cls(dimension, index, int(header.get("trained_for", 0))), int(header["version"])
