"""The knowledge graph's storage: records, tables, entity resolution and the store."""

from kb_assistant.vectorstore.graph.records import (
    ENTITY_TYPES,
    Community,
    Entity,
    EntityMention,
    Extraction,
    GraphStats,
    Relation,
    RelationMention,
    normalise,
)
from kb_assistant.vectorstore.graph.store import GraphStore

__all__ = [
    "ENTITY_TYPES",
    "Community",
    "Entity",
    "EntityMention",
    "Extraction",
    "GraphStats",
    "GraphStore",
    "Relation",
    "RelationMention",
    "normalise",
]
