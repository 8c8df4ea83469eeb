"""``kb reindex``: move a knowledge base to another embedding model without reading its files.

Every chunk's stored text is embedded again by the new model into a scratch file beside the
catalog; only when all of it is done are the vectors and the manifest switched, at once
(``KnowledgeBase.switch_embeddings``). Until then the knowledge base keeps serving with its old
model, and a reindex stopped midway (Ctrl-C, a kill, a crash) leaves it exactly so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kb_assistant.loaders.splitter import embed_text
from kb_assistant.models.embeddings import Embedder
from kb_assistant.vectorstore import KnowledgeBase

SCRATCH_NAME = ".reindex.f32"
ReindexProgress = Callable[[int, int], None]  # chunks embedded, chunks in all


@dataclass(frozen=True)
class ReindexReport:
    """What ``kb reindex`` did."""

    knowledge_base: str
    old_model: str
    new_model: str
    dimension: int
    chunks: int
    seconds: float

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {
            "knowledge_base": self.knowledge_base, "old_model": self.old_model,
            "new_model": self.new_model, "dimension": self.dimension, "chunks": self.chunks,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


def reindex(
    base: KnowledgeBase,
    embedder: Embedder,
    *,
    batch_size: int = 256,
    progress: ReindexProgress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> ReindexReport:
    """Re-embed every chunk of ``base`` with ``embedder`` and switch to it atomically.

    Raises:
        KnowledgeBaseLocked: another writer did not finish in time.
        ModelError: the new model failed; the knowledge base is unchanged.
    """
    started = time.perf_counter()
    old = base.manifest.embedding_model
    scratch = base.folder / SCRATCH_NAME
    with base.locked(on_wait=on_wait):
        total = base.catalog.chunk_count()
        ids: list[int] = []
        vectors = np.lib.format.open_memmap(
            scratch, mode="w+", dtype=np.float32, shape=(max(total, 1), embedder.dimension)
        )
        try:
            if progress:
                progress(0, total)
            for chunk_ids, rows in base.catalog.embed_texts(batch_size):
                texts = [embed_text(text, heading, sheet) for text, heading, sheet in rows]
                vectors[len(ids) : len(ids) + len(texts)] = embedder.embed_array(texts)
                ids.extend(chunk_ids)
                if progress:
                    progress(len(ids), total)
            manifest = replace(
                base.manifest, embedding_model=embedder.model_id, dimension=embedder.dimension
            )
            base.switch_embeddings(manifest, _batches(ids, vectors, batch_size))
        finally:
            del vectors
            with contextlib.suppress(FileNotFoundError):
                Path(scratch).unlink()
    return ReindexReport(
        base.name, old, embedder.model_id, embedder.dimension, len(ids),
        time.perf_counter() - started,
    )  # fmt: skip


def _batches(
    ids: list[int], vectors: np.ndarray, size: int
) -> Iterator[tuple[list[int], np.ndarray]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size], np.asarray(vectors[start : start + size])
