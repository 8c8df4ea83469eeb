"""The graph's tables in the catalog, and the cleanup after chunks are deleted."""

from __future__ import annotations

import sqlite3

GRAPH_SCHEMA = """
CREATE TABLE IF NOT EXISTS graph_entities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS graph_entities_by_key ON graph_entities(key);
CREATE TABLE IF NOT EXISTS graph_aliases (
    alias TEXT NOT NULL,
    entity_id INTEGER NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,
    PRIMARY KEY (alias, entity_id)
);
CREATE INDEX IF NOT EXISTS graph_aliases_by_entity ON graph_aliases(entity_id);
CREATE TABLE IF NOT EXISTS graph_mentions (
    entity_id INTEGER NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,
    chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (entity_id, chunk_id)
);
CREATE INDEX IF NOT EXISTS graph_mentions_by_chunk ON graph_mentions(chunk_id);
CREATE TABLE IF NOT EXISTS graph_relations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source INTEGER NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,
    target INTEGER NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,
    relation TEXT NOT NULL,
    UNIQUE (source, target, relation)
);
CREATE INDEX IF NOT EXISTS graph_relations_by_target ON graph_relations(target);
CREATE TABLE IF NOT EXISTS graph_evidence (
    relation_id INTEGER NOT NULL REFERENCES graph_relations(id) ON DELETE CASCADE,
    chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    description TEXT NOT NULL DEFAULT '',
    strength REAL NOT NULL DEFAULT 1,
    PRIMARY KEY (relation_id, chunk_id)
);
CREATE INDEX IF NOT EXISTS graph_evidence_by_chunk ON graph_evidence(chunk_id);
CREATE TABLE IF NOT EXISTS graph_done (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS graph_cache (
    text_hash TEXT NOT NULL,
    method TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (text_hash, method)
);
CREATE TABLE IF NOT EXISTS graph_communities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    members_hash TEXT NOT NULL,
    title TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS graph_members (
    community_id INTEGER NOT NULL REFERENCES graph_communities(id) ON DELETE CASCADE,
    entity_id INTEGER NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,
    PRIMARY KEY (community_id, entity_id)
);
CREATE INDEX IF NOT EXISTS graph_members_by_entity ON graph_members(entity_id);
"""
PRUNE = (
    "DELETE FROM graph_relations WHERE id NOT IN (SELECT relation_id FROM graph_evidence)",
    "DELETE FROM graph_entities WHERE id NOT IN (SELECT entity_id FROM graph_mentions)",
    "DELETE FROM graph_communities WHERE id NOT IN (SELECT community_id FROM graph_members)",
)
TABLES = (
    "graph_members", "graph_communities", "graph_evidence", "graph_relations",
    "graph_mentions", "graph_aliases", "graph_entities", "graph_done",
)  # fmt: skip


def prune(db: sqlite3.Connection) -> None:
    """Remove relations with no evidence left, entities with no mention left, and empty
    communities (inside the caller's transaction, after chunks were deleted)."""
    if db.execute("SELECT 1 FROM graph_entities LIMIT 1").fetchone() is None:
        return
    for statement in PRUNE:
        db.execute(statement)
    bump(db)


def bump(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('graph_version', '1') ON CONFLICT(key) "
        "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


_DANGLING = (
    "DELETE FROM graph_mentions WHERE chunk_id NOT IN (SELECT id FROM chunks)",
    "DELETE FROM graph_evidence WHERE chunk_id NOT IN (SELECT id FROM chunks)",
    "DELETE FROM graph_done WHERE chunk_id NOT IN (SELECT id FROM chunks)",
    "DELETE FROM graph_mentions WHERE entity_id NOT IN (SELECT id FROM graph_entities)",
    "DELETE FROM graph_relations WHERE source NOT IN (SELECT id FROM graph_entities) "
    "OR target NOT IN (SELECT id FROM graph_entities)",
    "DELETE FROM graph_evidence WHERE relation_id NOT IN (SELECT id FROM graph_relations)",
)


def repair(db: sqlite3.Connection) -> int:
    """Delete graph rows that point at missing chunks, entities or relations, then prune
    (inside the caller's transaction); returns how many rows went."""
    removed = sum(int(db.execute(statement).rowcount) for statement in _DANGLING)
    before = db.total_changes
    for statement in PRUNE:
        db.execute(statement)
    removed += db.total_changes - before
    if removed:
        bump(db)
    return removed
