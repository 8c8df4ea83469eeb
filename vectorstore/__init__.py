"""Knowledge-base storage: SQLite catalog (truth), FAISS index (speed), manifest (identity)."""

from vectorstore.catalog import ChunkRecord, DocumentRecord, NewChunk
from vectorstore.knowledge_base import KnowledgeBase, KnowledgeBaseWriter, SearchHit
from vectorstore.library import KnowledgeBaseSummary, Library, validate_name
from vectorstore.manifest import Manifest

__all__ = [
    "ChunkRecord",
    "DocumentRecord",
    "KnowledgeBase",
    "KnowledgeBaseSummary",
    "KnowledgeBaseWriter",
    "Library",
    "Manifest",
    "NewChunk",
    "SearchHit",
    "validate_name",
]
