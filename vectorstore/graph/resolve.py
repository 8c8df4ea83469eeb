"""Entity resolution: which stored entity a mention names, inside one write transaction."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from kb_assistant.vectorstore.graph.records import (
    EntityMention,
    Extraction,
    acronym,
    compatible,
    normalise,
)


@dataclass
class Resolver:
    """Finds the entity a mention names, inside one write transaction."""

    db: sqlite3.Connection
    vectors: Mapping[str, np.ndarray]
    threshold: float | None
    strict: bool = True
    _matrix: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)

    def find(self, mention: EntityMention) -> int | None:
        key = normalise(mention.name)
        for entity_id, kind in self.db.execute(
            "SELECT e.id, e.type FROM graph_aliases a JOIN graph_entities e ON e.id = a.entity_id "
            "WHERE a.alias = ? ORDER BY e.id",
            (key,),
        ):
            if not self.strict or compatible(kind, mention.type):
                return int(entity_id)
        short = acronym(key)  # "free software foundation" after "FSF": the short one's entity
        if short is not None:
            for entity_id, kind in self.db.execute(
                "SELECT e.id, e.type FROM graph_aliases a JOIN graph_entities e "
                "ON e.id = a.entity_id WHERE a.alias = ? ORDER BY e.id",
                (short,),
            ):
                if compatible(kind, mention.type):
                    return int(entity_id)
        if re.fullmatch(r"[a-z]{2,6}", key):
            for entity_id, alias in self.db.execute(
                "SELECT entity_id, alias FROM graph_aliases WHERE alias LIKE ? || '% %'",
                (key[0],),
            ):
                if acronym(str(alias)) == key and self._type(int(entity_id), mention.type):
                    return int(entity_id)
        return self._nearest(mention)

    def _type(self, entity_id: int, kind: str) -> bool:
        row = self.db.execute(
            "SELECT type FROM graph_entities WHERE id = ?", (entity_id,)
        ).fetchone()
        return row is not None and compatible(str(row[0]), kind)

    def _nearest(self, mention: EntityMention) -> int | None:
        vector = self.vectors.get(mention.name)
        if vector is None or self.threshold is None:
            return None
        ids, rows = self._same_type(mention.type)
        if not ids:
            return None
        scores = np.stack(rows) @ vector
        best = int(np.argmax(scores))
        return ids[best] if float(scores[best]) >= self.threshold else None

    def _same_type(self, kind: str) -> tuple[list[int], list[np.ndarray]]:
        if kind not in self._matrix:
            # only vectors of this size: a knowledge base re-embedded since has others
            size = 4 * len(next(iter(self.vectors.values())))
            rows = self.db.execute(
                "SELECT id, vector FROM graph_entities WHERE type = ? AND length(vector) = ?",
                (kind, size),
            ).fetchall()
            self._matrix[kind] = (
                [int(i) for i, _ in rows],
                [np.frombuffer(v, dtype=np.float32) for _, v in rows],
            )
        return self._matrix[kind]

    def added(self, entity_id: int, kind: str, vector: np.ndarray | None) -> None:
        if vector is not None and kind in self._matrix:
            self._matrix[kind][0].append(entity_id)
            self._matrix[kind][1].append(vector)

    def store(self, chunk_id: int, extraction: Extraction) -> None:
        """Insert one chunk's mentions, relations and evidence, and mark it extracted."""
        db = self.db
        ids: dict[str, int] = {}
        for mention in extraction.entities:
            entity_id = self.entity_for(mention)
            ids.setdefault(mention.name, entity_id)
            db.execute(
                "INSERT OR IGNORE INTO graph_mentions (entity_id, chunk_id, name, description) "
                "VALUES (?, ?, ?, ?)",
                (entity_id, chunk_id, mention.name, mention.description),
            )
        for rel in extraction.relations:
            source, target = ids.get(rel.source), ids.get(rel.target)
            if source is None or target is None or source == target:
                continue
            db.execute(
                "INSERT OR IGNORE INTO graph_relations (source, target, relation) VALUES (?, ?, ?)",
                (source, target, rel.relation),
            )
            relation_id = db.execute(
                "SELECT id FROM graph_relations WHERE source = ? AND target = ? AND relation = ?",
                (source, target, rel.relation),
            ).fetchone()[0]
            db.execute(
                "INSERT OR IGNORE INTO graph_evidence (relation_id, chunk_id, description, "
                "strength) VALUES (?, ?, ?, ?)",
                (relation_id, chunk_id, rel.description, float(rel.strength)),
            )
        db.execute("INSERT OR IGNORE INTO graph_done (chunk_id) VALUES (?)", (chunk_id,))

    def entity_for(self, mention: EntityMention) -> int:
        db = self.db
        key = normalise(mention.name)
        entity_id = self.find(mention)
        if entity_id is None:
            vector = self.vectors.get(mention.name)
            entity_id = int(
                db.execute(
                    "INSERT INTO graph_entities (name, type, key, vector) VALUES (?, ?, ?, ?)",
                    (mention.name, mention.type, key,
                     None if vector is None else np.asarray(vector, np.float32).tobytes()),
                ).lastrowid or 0
            )  # fmt: skip
            self.added(entity_id, mention.type, vector)
        db.execute(
            "INSERT OR IGNORE INTO graph_aliases (alias, entity_id) VALUES (?, ?)",
            (key, entity_id),
        )
        return entity_id
