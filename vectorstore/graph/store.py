"""The knowledge graph of a knowledge base, kept in its catalog (``catalog.sqlite``).

Entities, relations, and where each was found: every *mention* (an entity seen in a chunk) and
every piece of *evidence* (a relation stated in a chunk) references the chunk, with ``ON DELETE
CASCADE``, so removing a document removes its mentions and evidence in the same transaction;
entities left with no mention and relations left with no evidence are pruned there too
(``prune``). Nothing is pickled: the graph is rows, and ``kb graph export`` turns it into
GraphML or JSON for Gephi, networkx or Neo4j.

Entity resolution happens on write: a mention joins an existing entity when one of its
normalised names is already an alias of that entity (or is its acronym) and their types agree,
or when the embeddings of their names are closer than the caller's threshold; otherwise it
becomes a new entity. ``graph_done`` records the chunks already extracted, so an interrupted
build resumes where it stopped, and ``graph_cache`` keeps each extraction by the chunk text's
hash, so a re-ingested document is not sent to the model again for unchanged chunks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_assistant.errors import KBError
from kb_assistant.vectorstore.graph.records import (
    Community,
    Entity,
    Extraction,
    GraphStats,
    Relation,
    normalise,
)
from kb_assistant.vectorstore.graph.resolve import Resolver
from kb_assistant.vectorstore.graph.schema import TABLES, bump

if TYPE_CHECKING:
    from kb_assistant.vectorstore.catalog import Catalog


class GraphStore:
    """Reads and writes the graph tables of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # --- reading ------------------------------------------------------------------------

    def method(self) -> str | None:
        """How the graph was built (``fast``, or ``llm:<model>``); None before any build."""
        with self.catalog.reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'graph_method'").fetchone()
        return None if row is None else str(row[0])

    def version(self) -> int:
        """Bumped by every graph write (caches of the graph key on it)."""
        with self.catalog.reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'graph_version'").fetchone()
        return 0 if row is None else int(row[0])

    def rate(self, method: str) -> float | None:
        """Seconds per chunk the last build by ``method`` took (None: never measured)."""
        with self.catalog.reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (f"graph_rate:{method}",))
            found = row.fetchone()
        return None if found is None else float(found[0])

    def set_rate(self, method: str, seconds: float) -> None:
        """Remember the seconds per chunk a build by ``method`` took (for the next estimate)."""
        with self.catalog.writing() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"graph_rate:{method}", f"{seconds:.4f}"),
            )

    def stats(self) -> GraphStats:
        """Counts of entities, relations, mentions, communities and extracted chunks."""
        with self.catalog.reading() as db:

            def count(sql: str) -> int:
                return int(db.execute(sql).fetchone()[0])

            types = dict(
                db.execute(
                    "SELECT type, count(*) FROM graph_entities GROUP BY type ORDER BY 2 DESC"
                ).fetchall()
            )
            return GraphStats(
                method=self.method(),
                entities=count("SELECT count(*) FROM graph_entities"),
                relations=count("SELECT count(*) FROM graph_relations"),
                mentions=count("SELECT count(*) FROM graph_mentions"),
                communities=count("SELECT count(*) FROM graph_communities"),
                chunks_done=count("SELECT count(*) FROM graph_done"),
                chunks_total=count("SELECT count(*) FROM chunks"),
                types={str(k): int(v) for k, v in types.items()},
            )

    def pending(self, limit: int | None = None) -> list[tuple[int, str, str]]:
        """Chunks not yet extracted, in document order: ``(chunk_id, text, text_hash)``."""
        sql = (
            "SELECT c.id, c.text, c.text_hash FROM chunks c LEFT JOIN graph_done g "
            "ON g.chunk_id = c.id WHERE g.chunk_id IS NULL ORDER BY c.doc_id, c.ordinal"
        )
        with self.catalog.reading() as db:
            rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [(int(i), str(t), str(h)) for i, t, h in rows]

    def all_chunks(self) -> list[tuple[int, str, str]]:
        """Every chunk, in document order: ``(chunk_id, text, text_hash)``."""
        with self.catalog.reading() as db:
            rows = db.execute(
                "SELECT id, text, text_hash FROM chunks ORDER BY doc_id, ordinal"
            ).fetchall()
        return [(int(i), str(t), str(h)) for i, t, h in rows]

    def cached(self, hashes: Iterable[str], method: str) -> dict[str, Extraction]:
        """Extractions already made of these chunk texts by ``method``."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, Extraction] = {}
        with self.catalog.reading() as db:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                for text_hash, result in db.execute(
                    f"SELECT text_hash, result FROM graph_cache WHERE method = ? "
                    f"AND text_hash IN ({marks})",
                    [method, *part],
                ):
                    found[str(text_hash)] = Extraction.from_json(str(result))
        return found

    def entities(self, ids: Iterable[int]) -> dict[int, Entity]:
        """Entities by id, with description, aliases, mention count and degree."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Entity] = {}
        with self.catalog.reading() as db:
            for entity_id in wanted:
                row = db.execute(
                    "SELECT name, type FROM graph_entities WHERE id = ?", (entity_id,)
                ).fetchone()
                if row is not None:
                    found[entity_id] = self._entity(db, entity_id, str(row[0]), str(row[1]))
        return found

    def _entity(self, db: sqlite3.Connection, entity_id: int, name: str, kind: str) -> Entity:
        descriptions = [
            str(r[0])
            for r in db.execute(
                "SELECT description FROM graph_mentions WHERE entity_id = ? AND description != '' "
                "GROUP BY description ORDER BY count(*) DESC, min(chunk_id) LIMIT 3",
                (entity_id,),
            )
        ]
        aliases = tuple(
            str(r[0])
            for r in db.execute(
                "SELECT DISTINCT name FROM graph_mentions WHERE entity_id = ? AND name != ? "
                "LIMIT 12",
                (entity_id, name),
            )
        )
        mentions = int(
            db.execute(
                "SELECT count(*) FROM graph_mentions WHERE entity_id = ?", (entity_id,)
            ).fetchone()[0]
        )
        degree = int(
            db.execute(
                "SELECT count(*) FROM graph_relations WHERE source = ? OR target = ?",
                (entity_id, entity_id),
            ).fetchone()[0]
        )
        return Entity(entity_id, name, kind, " ".join(descriptions), aliases, mentions, degree)

    def search(self, text: str, limit: int = 20, kind: str | None = None) -> list[Entity]:
        """Entities whose name or alias contains ``text`` (normalised), most mentioned first."""
        key = normalise(text)
        if not key:
            raise KBError(f"'{text}' names no entity: give a name or part of one")
        sql = (
            "SELECT e.id, e.name, e.type, count(DISTINCT m.chunk_id) AS n FROM graph_entities e "
            "JOIN graph_mentions m ON m.entity_id = e.id WHERE e.id IN (SELECT entity_id FROM "
            "graph_aliases WHERE instr(alias, ?) > 0)"
        )
        args: list[Any] = [key]
        if kind:
            sql += " AND e.type = ?"
            args.append(kind)
        sql += (
            " GROUP BY e.id ORDER BY (e.id IN (SELECT entity_id FROM graph_aliases "
            "WHERE alias = ?)) DESC, n DESC, e.id LIMIT ?"
        )
        args += [key, int(limit)]
        with self.catalog.reading() as db:
            rows = db.execute(sql, args).fetchall()
            return [self._entity(db, int(i), str(n), str(t)) for i, n, t, _ in rows]

    def top_entities(
        self, limit: int = 50, kind: str | None = None, doc_id: int | None = None
    ) -> list[tuple[int, str, str, int]]:
        """The most mentioned entities ``(id, name, type, chunks)``, optionally of one type or
        one document."""
        sql = (
            "SELECT e.id, e.name, e.type, count(DISTINCT m.chunk_id) AS n FROM graph_entities e "
            "JOIN graph_mentions m ON m.entity_id = e.id JOIN chunks c ON c.id = m.chunk_id "
            "WHERE 1 = 1"
        )
        args: list[Any] = []
        if kind:
            sql += " AND e.type = ?"
            args.append(kind)
        if doc_id is not None:
            sql += " AND c.doc_id = ?"
            args.append(int(doc_id))
        sql += " GROUP BY e.id ORDER BY n DESC, e.id LIMIT ?"
        args.append(int(limit))
        with self.catalog.reading() as db:
            return [(int(i), str(n), str(t), int(c)) for i, n, t, c in db.execute(sql, args)]

    def relations(self, entity_ids: Iterable[int], limit: int = 200) -> list[Relation]:
        """Relations touching any of ``entity_ids``, strongest (most evidence) first."""
        ids = list(dict.fromkeys(int(i) for i in entity_ids))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        sql = (
            "SELECT r.id, r.source, s.name, r.target, t.name, r.relation, (SELECT e2.description "
            "FROM graph_evidence e2 WHERE e2.relation_id = r.id AND e2.description != '' "
            "ORDER BY e2.strength DESC LIMIT 1), sum(ev.strength), "
            "group_concat(ev.chunk_id) FROM graph_relations r "
            "JOIN graph_entities s ON s.id = r.source JOIN graph_entities t ON t.id = r.target "
            "JOIN graph_evidence ev ON ev.relation_id = r.id "
            f"WHERE r.source IN ({marks}) OR r.target IN ({marks}) "
            "GROUP BY r.id ORDER BY sum(ev.strength) DESC, r.id LIMIT ?"
        )
        with self.catalog.reading() as db:
            rows = db.execute(sql, [*ids, *ids, int(limit)]).fetchall()
        return [_relation(row) for row in rows]

    def mention_chunks(self, entity_ids: Iterable[int]) -> dict[int, list[int]]:
        """For each entity, the ids of the chunks that mention it (in document order)."""
        return self._grouped(
            entity_ids, "SELECT m.entity_id, m.chunk_id FROM graph_mentions m JOIN chunks c "
            "ON c.id = m.chunk_id WHERE m.entity_id IN ({marks}) ORDER BY c.doc_id, c.ordinal",
        )  # fmt: skip

    def _grouped(self, keys: Iterable[int], sql: str) -> dict[int, list[int]]:
        """``{key: [values]}`` from a query of ``(key, value)`` rows whose ``{marks}`` are the
        keys' placeholders; every key present, with an empty list when it has no row."""
        ids = list(dict.fromkeys(int(i) for i in keys))
        found: dict[int, list[int]] = {i: [] for i in ids}
        if not ids:
            return found
        with self.catalog.reading() as db:
            for key, value in db.execute(sql.format(marks=",".join("?" * len(ids))), ids):
                found[int(key)].append(int(value))
        return found

    def aliases(self) -> list[tuple[str, int, int]]:
        """Every alias key with its entity and that entity's number of mentioning chunks."""
        with self.catalog.reading() as db:
            rows = db.execute(
                "SELECT a.alias, a.entity_id, m.n FROM graph_aliases a JOIN (SELECT entity_id, "
                "count(*) AS n FROM graph_mentions GROUP BY entity_id) m USING (entity_id)"
            ).fetchall()
        return [(str(a), int(e), int(n)) for a, e, n in rows]

    def chunk_entities(self, chunk_ids: Iterable[int]) -> dict[int, list[int]]:
        """For each chunk, the entities it mentions."""
        return self._grouped(
            chunk_ids,
            "SELECT chunk_id, entity_id FROM graph_mentions WHERE chunk_id IN ({marks})",
        )

    def communities(self) -> list[Community]:
        """Every community, largest first, with its members."""
        with self.catalog.reading() as db:
            rows = db.execute(
                "SELECT id, title, summary, size FROM graph_communities ORDER BY size DESC, id"
            ).fetchall()
            members: dict[int, list[int]] = {}
            for community_id, entity_id in db.execute(
                "SELECT community_id, entity_id FROM graph_members"
            ):
                members.setdefault(int(community_id), []).append(int(entity_id))
        return [
            Community(int(i), str(t), str(s), int(n), tuple(members.get(int(i), [])))
            for i, t, s, n in rows
        ]

    def dump(self) -> tuple[list[tuple[Any, ...]], list[Relation], dict[int, list[int]]]:
        """The whole graph in whole-table reads (no id lists, whatever its size): entities
        ``(id, name, type, description, mentions)``, relations, and each entity's chunks."""
        with self.catalog.reading() as db:
            entities = db.execute(
                "SELECT e.id, e.name, e.type, (SELECT m2.description FROM graph_mentions m2 "
                "WHERE m2.entity_id = e.id AND m2.description != '' LIMIT 1), count(m.chunk_id) "
                "FROM graph_entities e JOIN graph_mentions m ON m.entity_id = e.id "
                "GROUP BY e.id ORDER BY e.id"
            ).fetchall()
            relations = db.execute(
                "SELECT r.id, r.source, s.name, r.target, t.name, r.relation, (SELECT "
                "e2.description FROM graph_evidence e2 WHERE e2.relation_id = r.id AND "
                "e2.description != '' LIMIT 1), sum(ev.strength), group_concat(ev.chunk_id) "
                "FROM graph_relations r JOIN graph_entities s ON s.id = r.source "
                "JOIN graph_entities t ON t.id = r.target JOIN graph_evidence ev "
                "ON ev.relation_id = r.id GROUP BY r.id ORDER BY r.id"
            ).fetchall()
            chunks: dict[int, list[int]] = {}
            for entity_id, chunk_id in db.execute(
                "SELECT entity_id, chunk_id FROM graph_mentions ORDER BY entity_id, chunk_id"
            ):
                chunks.setdefault(int(entity_id), []).append(int(chunk_id))
        return [tuple(r) for r in entities], [_relation(r) for r in relations], chunks

    def edges(self) -> list[tuple[int, int, float]]:
        """Every relation as an undirected weighted edge ``(a, b, evidence strength)``."""
        with self.catalog.reading() as db:
            rows = db.execute(
                "SELECT r.source, r.target, sum(ev.strength) FROM graph_relations r "
                "JOIN graph_evidence ev ON ev.relation_id = r.id GROUP BY r.id"
            ).fetchall()
        return [(int(a), int(b), float(w)) for a, b, w in rows]

    def all_entities(self) -> list[tuple[int, str, str]]:
        """Every entity ``(id, name, type)``."""
        with self.catalog.reading() as db:
            return [
                (int(i), str(n), str(t))
                for i, n, t in db.execute("SELECT id, name, type FROM graph_entities ORDER BY id")
            ]

    def problems(self) -> list[str]:
        """What breaks the graph's own rules (``kb check``): empty when it is sound."""
        checks = {
            "mentions of missing chunks": "SELECT count(*) FROM graph_mentions WHERE chunk_id "
            "NOT IN (SELECT id FROM chunks)",
            "evidence of missing chunks": "SELECT count(*) FROM graph_evidence WHERE chunk_id "
            "NOT IN (SELECT id FROM chunks)",
            "entities with no mention": "SELECT count(*) FROM graph_entities WHERE id NOT IN "
            "(SELECT entity_id FROM graph_mentions)",
            "relations with no evidence": "SELECT count(*) FROM graph_relations WHERE id NOT IN "
            "(SELECT relation_id FROM graph_evidence)",
            "relations to missing entities": "SELECT count(*) FROM graph_relations WHERE source "
            "NOT IN (SELECT id FROM graph_entities) OR target NOT IN (SELECT id FROM "
            "graph_entities)",
            "extracted marks of missing chunks": "SELECT count(*) FROM graph_done WHERE chunk_id "
            "NOT IN (SELECT id FROM chunks)",
        }
        found = []
        with self.catalog.reading() as db:
            for what, sql in checks.items():
                n = int(db.execute(sql).fetchone()[0])
                if n:
                    found.append(f"knowledge graph: {n} {what} ('kb check --repair' removes them)")
        return found

    # --- writing ------------------------------------------------------------------------

    def write(
        self,
        results: Sequence[tuple[int, str, Extraction]],
        method: str,
        *,
        vectors: Mapping[str, np.ndarray] | None = None,
        threshold: float | None = None,
        strict_types: bool = True,
    ) -> int:
        """Store the extractions of a batch of chunks ``(chunk_id, text_hash, extraction)`` in
        one transaction, resolving each mention against the entities already stored; chunks
        removed meanwhile are skipped. Returns how many chunks were stored.

        Args:
            method: how they were extracted (kept in the extraction cache and the meta table).
            vectors: unit embeddings of mention names (for resolution by similarity).
            threshold: the cosine at or above which two names of one type are one entity.
            strict_types: one name of two types is two entities (False: NLP types are
                guesses, so one name is one entity).
        """
        with self.catalog.writing() as db:
            self._set_method(db, method)
            resolver = Resolver(db, vectors or {}, threshold, strict_types)
            stored = 0
            for chunk_id, text_hash, extraction in results:
                db.execute(
                    "INSERT OR REPLACE INTO graph_cache (text_hash, method, result) "
                    "VALUES (?, ?, ?)",
                    (text_hash, method, extraction.to_json()),
                )
                if db.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone() is None:
                    continue
                resolver.store(chunk_id, extraction)
                stored += 1
            bump(db)
            return stored

    def reset(self, forget: str | None = None) -> None:
        """Remove the whole graph; the extraction cache stays, but for method ``forget``."""
        with self.catalog.writing() as db:
            if forget is not None:
                db.execute("DELETE FROM graph_cache WHERE method = ?", (forget,))
            for table in TABLES:
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM meta WHERE key = 'graph_method'")
            bump(db)

    def replace_communities(
        self, communities: Sequence[tuple[str, str, str, Sequence[int]]]
    ) -> None:
        """Store the communities ``(members_hash, title, summary, member ids)`` in place of the
        previous ones."""
        with self.catalog.writing() as db:
            db.execute("DELETE FROM graph_communities")
            for members_hash, title, summary, members in communities:
                community_id = db.execute(
                    "INSERT INTO graph_communities (members_hash, title, summary, size) "
                    "VALUES (?, ?, ?, ?)",
                    (members_hash, title, summary, len(members)),
                ).lastrowid
                db.executemany(
                    "INSERT OR IGNORE INTO graph_members (community_id, entity_id) "
                    "SELECT ?, id FROM graph_entities WHERE id = ?",
                    [(community_id, int(m)) for m in members],
                )
            bump(db)

    def summaries(self) -> dict[str, tuple[str, str]]:
        """Stored community titles and summaries by the hash of their member set (a summary is
        written again only when its community changed)."""
        with self.catalog.reading() as db:
            return {
                str(h): (str(t), str(s))
                for h, t, s in db.execute(
                    "SELECT members_hash, title, summary FROM graph_communities"
                )
            }

    def prune_cache(self) -> int:
        """Forget cached extractions of texts no chunk has any more; returns how many."""
        with self.catalog.writing() as db:
            cursor = db.execute(
                "DELETE FROM graph_cache WHERE text_hash NOT IN (SELECT text_hash FROM chunks)"
            )
            return int(cursor.rowcount)

    @staticmethod
    def _set_method(db: sqlite3.Connection, method: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('graph_method', ?)", (method,))


def _relation(row: Sequence[Any]) -> Relation:
    relation_id, source, source_name, target, target_name, relation, desc, strength, chunks = row
    description = str(desc or "")[:400]
    return Relation(
        int(relation_id), int(source), str(source_name), int(target), str(target_name),
        str(relation), description, float(strength or 0.0),
        tuple(sorted({int(c) for c in str(chunks or "").split(",") if c})),
    )  # fmt: skip
