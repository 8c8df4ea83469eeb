"""``manifest.json``: what a knowledge base was built with, checked every time it is opened."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from kb_assistant.errors import CorruptKnowledgeBase, EmbeddingMismatch
from kb_assistant.vectorstore.files import atomic_write_bytes

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """The facts that must not change under a knowledge base's vectors."""

    name: str
    embedding_model: str
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""

    @classmethod
    def new(
        cls, name: str, embedding_model: str, dimension: int, chunk_tokens: int, overlap: int
    ) -> Manifest:
        """A manifest for a knowledge base created now."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(name, embedding_model, dimension, chunk_tokens, overlap, created_at=now)

    @classmethod
    def read(cls, folder: Path, name: str = MANIFEST_NAME) -> Manifest:
        """Read and validate ``folder/manifest.json`` (or another file name).

        Raises:
            CorruptKnowledgeBase: missing, unreadable, or written by a newer kb-assistant.
        """
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**data)
        except FileNotFoundError as exc:
            raise CorruptKnowledgeBase(f"{path} is missing; this is not a knowledge base") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise CorruptKnowledgeBase(
                f"{path} is damaged ({exc}); 'kb check --kb {folder.name} --repair' restores it "
                "from the catalog"
            ) from exc
        if manifest.schema_version > SCHEMA_VERSION:
            raise CorruptKnowledgeBase(
                f"{path}: written by a newer kb-assistant (schema {manifest.schema_version}, "
                f"this one reads {SCHEMA_VERSION}); upgrade kb-assistant"
            )
        return manifest

    def write(self, folder: Path, name: str = MANIFEST_NAME) -> None:
        """Write atomically into ``folder`` (as ``manifest.json`` or another file name)."""
        data = json.dumps(asdict(self), indent=2, ensure_ascii=False).encode()
        atomic_write_bytes(folder / name, data)

    def check_embedding(self, model_id: str, dimension: int) -> None:
        """Refuse to mix vectors of two embedding models in one index.

        Raises:
            EmbeddingMismatch: naming both models and what to do.
        """
        if model_id == self.embedding_model and dimension == self.dimension:
            return
        raise EmbeddingMismatch(
            f"knowledge base '{self.name}' was built with embedding model "
            f"'{self.embedding_model}' ({self.dimension} dimensions) but the configured model is "
            f"'{model_id}' ({dimension} dimensions); set embedding_model back to "
            f"'{self.embedding_model}', or move it to the new model with "
            f"'kb reindex --kb {self.name} --embedding-model NAME'"
        )
