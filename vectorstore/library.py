"""The named knowledge bases under ``<home>/kbs/``: list, create, open, delete."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

from kb_assistant.errors import InvalidName, KBError, KnowledgeBaseExists, KnowledgeBaseNotFound
from kb_assistant.vectorstore.catalog import CATALOG_NAME, Catalog
from kb_assistant.vectorstore.files import fsync_dir
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase
from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.vector_store import VectorStoreConfig

logger = logging.getLogger(__name__)

# Letters of any script (Chinese names welcome), digits, '_', '-', '.'; not starting with '.'.
_NAME = re.compile(r"^[^\W][\w.-]{0,63}$", re.UNICODE)


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a knowledge base folder.

    Raises:
        InvalidName: saying what is allowed.
    """
    if not _NAME.match(name) or name in {".", ".."}:
        raise InvalidName(
            f"'{name}' cannot name a knowledge base: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class KnowledgeBaseSummary:
    """One line of ``kb kbs``."""

    name: str
    documents: int
    chunks: int
    embedding_model: str
    created_at: str
    path: Path


class Library:
    """All knowledge bases of one data directory."""

    def __init__(self, home: Path, vectors: VectorStoreConfig | None = None) -> None:
        self.root = home / "kbs"
        self.vectors = vectors or VectorStoreConfig()  # the vector store every open uses

    def _folder(self, name: str) -> Path:
        return self.root / validate_name(name)

    def names(self) -> list[str]:
        """Names of existing knowledge bases, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / "manifest.json").is_file()
            and not p.name.startswith(".")
        )  # fmt: skip

    def exists(self, name: str) -> bool:
        """Whether a knowledge base of that name exists."""
        return (self._folder(name) / "manifest.json").is_file()

    def summaries(self) -> list[KnowledgeBaseSummary]:
        """Name, size and model of each knowledge base."""
        out = []
        for name in self.names():
            kb = self.open(name)
            try:
                docs = kb.documents()
                out.append(
                    KnowledgeBaseSummary(
                        name, len(docs), sum(d.chunks for d in docs),
                        kb.manifest.embedding_model, kb.manifest.created_at, kb.folder,
                    )
                )  # fmt: skip
            finally:
                kb.close()
        return out

    def folder(self, name: str) -> Path:
        """The folder of an existing knowledge base, even one whose manifest is damaged.

        Raises:
            KnowledgeBaseNotFound: with the names that do exist.
        """
        folder = self._folder(name)
        if not (folder / CATALOG_NAME).is_file():
            self._not_found(name)
        return folder

    def _not_found(self, name: str) -> NoReturn:
        known = ", ".join(self.names()) or "none yet"
        raise KnowledgeBaseNotFound(
            f"no knowledge base named '{name}' (existing: {known}); "
            f"'kb ingest PATH --kb {name}' creates it"
        )

    def open(self, name: str) -> KnowledgeBase:
        """Open an existing knowledge base.

        Raises:
            KnowledgeBaseNotFound: with the names that do exist.
        """
        if not self.exists(name):
            self._not_found(name)
        return KnowledgeBase(self._folder(name), self.vectors)

    def create(
        self, name: str, *, embedding_model: str, dimension: int, chunk_tokens: int, overlap: int
    ) -> KnowledgeBase:
        """Create an empty knowledge base; it appears whole or not at all.

        Raises:
            KnowledgeBaseExists: the name is taken.
        """
        final = self._folder(name)
        if final.exists():
            raise KnowledgeBaseExists(f"a knowledge base named '{name}' already exists")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".creating-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            manifest = Manifest.new(name, embedding_model, dimension, chunk_tokens, overlap)
            catalog = Catalog(staging / CATALOG_NAME, create=True)
            try:
                catalog.record_identity(asdict(manifest))
            finally:
                catalog.close()
            manifest.write(staging)
            try:
                os.rename(staging, final)  # fails if another process created it meanwhile
            except OSError as exc:
                raise KnowledgeBaseExists(
                    f"a knowledge base named '{name}' already exists"
                ) from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(self.root)
        return KnowledgeBase(final, self.vectors)

    def delete(self, name: str) -> str | None:
        """Delete a knowledge base and everything in it (waits for a running writer).

        A Milvus server's collection lives outside the folder; if it cannot be dropped (the
        server is down), the folder is deleted all the same and the returned warning names
        the collection left on the server, to be dropped by hand.

        Returns:
            None when everything went; else that warning.

        Raises:
            KnowledgeBaseNotFound: there is no such knowledge base.
        """
        kb = self.open(name)
        trash = self.root / f".deleting-{uuid.uuid4().hex}"
        left: str | None = None
        try:
            with kb.locked():
                try:
                    kb.backend.discard()
                except KBError as exc:  # a server that is down must not keep the folder alive
                    cause = exc.__cause__ or exc  # Milvus's own words, not our advice to retry
                    left = (
                        f"deleted knowledge base '{name}', but its {kb.backend.label} could not "
                        f"be dropped ({cause}); drop it by hand"
                    )
                    logger.warning("%s", left)
                kb.close()
                os.rename(kb.folder, trash)
        finally:
            with contextlib.suppress(Exception):
                kb.close()
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return left
