"""Knowledge-base storage: SQLite catalog (truth), FAISS index (speed), manifest (identity)."""

from kb_assistant.vectorstore.catalog import ChunkRecord, DocumentRecord, NewChunk
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase, KnowledgeBaseWriter, SearchHit
from kb_assistant.vectorstore.library import KnowledgeBaseSummary, Library, validate_name
from kb_assistant.vectorstore.manifest import Manifest

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
