"""``catalog.sqlite``: documents and chunks, the source of truth of a knowledge base.

Each chunk row keeps its text, where it came from, and its embedding (float32 bytes), so the
FAISS index can always be rebuilt from the catalog and unchanged chunks of an edited file are
never embedded twice (looked up by the hash of the embedded text). Every write transaction
bumps ``meta.version``; chunks carry the version that added them and ``tombstones`` the version
that removed them, so a FAISS snapshot taken at version V is brought up to date by replaying
what changed after V.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from kb_assistant.errors import CorruptKnowledgeBase
from kb_assistant.vectorstore.graph import schema as graph
from kb_assistant.vectorstore.keywords import any_of, keyword_tokens, quoted

_DAMAGED = (
    "restore it from a backup, or delete the knowledge base and ingest again; "
    "'kb check --kb NAME' lists what is affected"
)

CATALOG_NAME = "catalog.sqlite"
POSTINGS_BUDGET = 30_000  # chunks a keyword query may score (see Catalog.keyword_search)
SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    pages INTEGER,
    chunks INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '[]',
    added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading TEXT,
    sheet TEXT,
    tokens INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    embedding BLOB NOT NULL,
    version INTEGER NOT NULL,
    boxes TEXT,
    ocr REAL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, ordinal);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks(text_hash);
CREATE INDEX IF NOT EXISTS chunks_by_version ON chunks(version);
CREATE TABLE IF NOT EXISTS tombstones (chunk_id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '4'), ('version', '0');
"""
# Schema 3: where each chunk's lines lie on its page (JSON [[x0, y0, x1, y1], ...], 0..1 of
# the page, top-left origin) and the OCR confidence of a page read from an image.
_LAYOUT_COLUMNS = (
    ("boxes", "ALTER TABLE chunks ADD COLUMN boxes TEXT"),
    ("ocr", "ALTER TABLE chunks ADD COLUMN ocr REAL"),
)
# The keyword index (rowid = chunk id), added in schema 2.
_FTS_TABLE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(tokens, tokenize='unicode61')"
)
_DOC_COLUMNS = "id, source, name, sha256, size, format, pages, chunks, status, notes, added_at"


@dataclass(frozen=True)
class DocumentRecord:
    """A document as the catalog knows it."""

    doc_id: int
    source: str
    name: str
    sha256: str
    size: int
    format: str
    pages: int | None
    chunks: int
    status: str
    notes: list[str]
    added_at: str


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk with its document's source."""

    chunk_id: int
    doc_id: int
    ordinal: int
    text: str
    page: int | None
    heading: str | None
    sheet: str | None
    source: str
    name: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    ocr: float | None = None


@dataclass(frozen=True)
class NewChunk:
    """A chunk to store, with its vector."""

    ordinal: int
    text: str
    page: int | None
    heading: str | None
    sheet: str | None
    tokens: int
    text_hash: str
    keywords: str  # space-separated keyword tokens for the full-text index
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    ocr: float | None = None


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file damaged.

    SQLite says "database disk image is malformed" (or "file is not a database") only when it
    reads a damaged page, which may be long after the file was opened. Operational errors
    (locked, disk full, interrupted) and constraint errors are not damage: the file is fine.
    """
    return not isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError)


def _damaged(catalog: object, exc: sqlite3.DatabaseError) -> CorruptKnowledgeBase:
    return CorruptKnowledgeBase(
        f"{getattr(catalog, 'path', 'catalog')} is damaged ({exc}); {_DAMAGED}"
    )


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Report a damaged catalog file as ``CorruptKnowledgeBase`` (see ``_damaged``)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise _damaged(args[0], exc) from exc

    return wrapper


def guarded_iterator(method: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """``guarded`` for a generator, whose damage shows only while it is iterated."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        try:
            yield from method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise _damaged(args[0], exc) from exc

    return wrapper


def now() -> str:
    """Current UTC time as stored in the catalog."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Catalog:
    """A connection to one knowledge base's catalog; safe to share between threads."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.is_file():
            raise CorruptKnowledgeBase(f"{path} is missing")
        self.path = path
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per document.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            # One huge document is one huge transaction; do not keep its WAL size afterwards.
            self._db.execute("PRAGMA journal_size_limit = 67108864")
            self._db.execute("PRAGMA foreign_keys = ON")
            if create:
                self._db.executescript(_SCHEMA + graph.GRAPH_SCHEMA)
                self._db.execute(_FTS_TABLE)
            schema = int(self._meta("schema_version"))
            if schema == 1:
                schema = self._migrate_to_2()
            if schema == 2:
                schema = self._migrate_to_3()
            if schema == 3:
                schema = self._migrate_to_4()
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise CorruptKnowledgeBase(
                f"{path} is damaged or not a catalog ({exc}); restore it from a backup or "
                "delete the knowledge base and ingest again"
            ) from exc
        if schema > SCHEMA_VERSION:
            raise CorruptKnowledgeBase(f"{path}: written by a newer kb-assistant; upgrade it")

    def _migrate_to_2(self) -> int:
        """Schema 2 adds the keyword index, filled from the stored chunks."""

        def keyword_index() -> None:
            self._db.execute(_FTS_TABLE)
            self._fill_keywords()

        return self._migrate(1, keyword_index)

    def _migrate_to_3(self) -> int:
        """Schema 3 adds the layout columns (empty for chunks stored before)."""

        def layout_columns() -> None:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
            for column, statement in _LAYOUT_COLUMNS:
                if column not in have:
                    self._db.execute(statement)

        return self._migrate(2, layout_columns)

    def _migrate_to_4(self) -> int:
        """Schema 4 adds the knowledge graph's tables (empty until ``kb graph build``)."""

        def graph_tables() -> None:
            # one statement at a time: executescript would commit the migration's transaction
            for statement in graph.GRAPH_SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

        return self._migrate(3, graph_tables)

    def _migrate(self, schema: int, step: Callable[[], None]) -> int:
        """Move the catalog from ``schema`` to the next in one transaction (a no-op when
        another process migrated it meanwhile); returns the new schema number."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if int(self._meta("schema_version")) == schema:
                step()
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(schema + 1),)
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return schema + 1

    def _fill_keywords(self) -> None:
        """Index every chunk's words in the keyword index (inside the caller's transaction)."""
        from kb_assistant.loaders.splitter import embed_text
        from kb_assistant.vectorstore.keywords import index_text

        rows = self._db.execute("SELECT id, text, heading, sheet FROM chunks").fetchall()
        self._db.executemany(
            "INSERT INTO chunks_fts (rowid, tokens) VALUES (?, ?)",
            [(i, index_text(embed_text(t, h, s))) for i, t, h, s in rows],
        )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise CorruptKnowledgeBase(f"{self.path}: meta.{key} is missing")
        return str(row[0])

    # --- reading ------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads only, held by this thread for the block (the graph
        store's queries)."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise _damaged(self, exc) from exc
                raise

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that does not touch chunks (the graph store's writes):
        committed when the block ends, rolled back if it raises."""
        with self.reading() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            finally:
                if db.in_transaction:  # an error (SQLite may have rolled back already)
                    db.execute("ROLLBACK")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold one read transaction so several reads see one consistent state."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    @guarded
    def version(self) -> int:
        """The number of committed write transactions."""
        with self._lock:
            return int(self._meta("version"))

    @guarded
    def documents(self) -> list[DocumentRecord]:
        """All documents, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM documents ORDER BY id").fetchall()
        return [_document(r) for r in rows]

    @guarded
    def source_hashes(self) -> dict[str, tuple[int, str]]:
        """``source -> (doc_id, sha256)`` for every document."""
        with self._lock:
            rows = self._db.execute("SELECT source, id, sha256 FROM documents").fetchall()
        return {source: (doc_id, sha) for source, doc_id, sha in rows}

    @guarded
    def chunk_count(self) -> int:
        """Number of chunks."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    @guarded
    def chunks_by_ids(self, ids: Iterable[int]) -> dict[int, ChunkRecord]:
        """Chunks with their document's source, by chunk id (missing ids are left out)."""
        wanted = list(ids)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.doc_id, c.ordinal, c.text, c.page, c.heading, c.sheet, "
                f"d.source, d.name, c.boxes, c.ocr FROM chunks c JOIN documents d "
                f"ON d.id = c.doc_id WHERE c.id IN ({marks})",
                wanted,
            ).fetchall()
        return {
            r[0]: ChunkRecord(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], _boxes(r[9]), r[10]
            )
            for r in rows
        }

    @guarded
    def keyword_search(
        self, terms: Sequence[str], k: int, budget: int = POSTINGS_BUDGET
    ) -> list[tuple[int, float]]:
        """Chunk ids best matching any of ``terms``, with BM25 scores (higher is better).

        BM25 over an OR query costs time in proportion to the chunks holding any of the terms
        (~0.8 us each here: "table" is in 238,000 of 10^6 chunks, 180 ms). So the terms are
        counted first, cheaply and only up to ``budget``, and the rarest are kept while their
        chunks add up to at most ``budget``: the words left out are the commonest, whose weight
        in BM25 is the lowest. Below ``budget`` chunks in all nothing is ever left out.
        """
        if not terms:
            return []
        with self._lock:
            counted = sorted((self._postings(t, budget), t) for t in terms)
            chosen: list[str] = []
            total = 0
            for count, term in counted:
                if total + count > budget:
                    break
                chosen.append(term)
                total += count
            if not chosen:
                return []
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?",
                (any_of(chosen), k),
            ).fetchall()
        return [(int(i), -float(score)) for i, score in rows]

    @guarded
    def document_frequency(self, phrase: str, cap: int = 10**9) -> int:
        """How many chunks hold ``phrase`` (its keyword tokens, in order), counted up to
        ``cap + 1``."""
        words = " ".join(keyword_tokens(phrase))
        if not words:
            return 0
        with self._lock:
            return self._postings(words, cap)

    def _postings(self, term: str, cap: int) -> int:
        """How many chunks hold ``term``, counted up to ``cap + 1``."""
        row = self._db.execute(
            "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?)",
            (quoted(term), cap + 1),
        ).fetchone()
        return int(row[0])

    @guarded
    def cached_embeddings(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """Stored embeddings of chunks whose embedded text has one of these hashes."""
        wanted = list(set(hashes))
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                rows = self._db.execute(
                    "SELECT text_hash, embedding FROM chunks WHERE text_hash IN "
                    f"({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                found.update((h, bytes(e)) for h, e in rows)
        return found

    @guarded_iterator
    def embeddings(
        self, since_version: int = -1, batch: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` batches of chunks added after ``since_version``."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, embedding FROM chunks WHERE version > ? ORDER BY id", (since_version,)
            )
            while rows := cursor.fetchmany(batch):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                yield ids, vectors.reshape(len(rows), -1)

    @guarded
    def sample_embeddings(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` stored vectors drawn at random (by id), for training an index."""
        with self._lock:
            low, high = self._db.execute("SELECT min(id), max(id) FROM chunks").fetchone()
            if low is None:
                return np.zeros((0, 0), dtype=np.float32)
            span = high - low + 1
            rng = np.random.default_rng(seed)
            wanted = rng.choice(span, min(n, span), replace=False) + low
            blobs: list[bytes] = []
            for start in range(0, len(wanted), 500):
                part = [int(i) for i in wanted[start : start + 500]]
                blobs += [r[0] for r in self._db.execute(
                    f"SELECT embedding FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                    part,
                )]  # fmt: skip
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32)
        return vectors.reshape(len(blobs), -1)

    @guarded
    def removed_since(self, version: int) -> list[int]:
        """Chunk ids removed after ``version``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT chunk_id FROM tombstones WHERE version > ?", (version,)
            ).fetchall()
        return [r[0] for r in rows]

    @guarded
    def identity(self) -> dict[str, object] | None:
        """The manifest this catalog was created with (None in catalogs from before 0.7)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        return None if row is None else dict(json.loads(row[0]))

    @guarded
    def stored_dimension(self) -> int | None:
        """The dimension of the stored vectors, read from one of them (None when empty)."""
        with self._lock:
            row = self._db.execute("SELECT length(embedding) FROM chunks LIMIT 1").fetchone()
        return None if row is None else int(row[0]) // 4

    # --- verifying and repairing (``vectorstore.integrity``) ------------------------------

    def quick_check(self) -> list[str]:
        """SQLite's own structural check of the file: empty when it is sound."""
        try:
            with self._lock:
                rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        found = [str(r[0]) for r in rows]
        return [] if found == ["ok"] else found

    @guarded
    def inconsistencies(self, dimension: int) -> dict[str, list[tuple[object, ...]]]:
        """Rows that break the catalog's own rules, by kind (each list empty when sound).

        ``unfinished``: documents not marked ready; ``miscounted``: documents whose chunk
        count differs from their chunks; ``orphans``: chunks of no document; ``bad_vectors``:
        chunks whose vector is not ``dimension`` floats; ``unindexed`` / ``stray_keywords``:
        chunks missing from the keyword index, and keyword rows of no chunk.
        """
        queries = {
            "unfinished": "SELECT id, source FROM documents WHERE status != 'ready'",
            "miscounted": "SELECT d.id, d.source, d.chunks, count(c.id) FROM documents d "
            "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id HAVING d.chunks != count(c.id)",
            "orphans": "SELECT id FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)",
            "bad_vectors": f"SELECT id FROM chunks WHERE length(embedding) != {4 * int(dimension)}",
            "unindexed": "SELECT id FROM chunks WHERE id NOT IN (SELECT rowid FROM chunks_fts)",
            "stray_keywords": "SELECT rowid FROM chunks_fts WHERE rowid NOT IN "
            "(SELECT id FROM chunks)",
        }
        with self._lock:
            return {kind: self._db.execute(sql).fetchall() for kind, sql in queries.items()}

    @guarded
    def chunk_ids(self) -> np.ndarray:
        """Every chunk id, ascending."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @guarded
    def repair(self, identity: dict[str, object] | None = None) -> list[str]:
        """Fix what ``inconsistencies`` finds that the catalog itself can fix, in one transaction.

        Unfinished documents and orphan chunks are deleted, chunk counts recounted, the keyword
        index rebuilt from the chunks, and ``identity`` recorded when given. Returns what it did.
        """
        done: list[str] = []
        version = self.begin()
        try:
            found = self.inconsistencies(self.stored_dimension() or 0)
            for doc_id, source in found["unfinished"]:
                self._remove_chunks(int(str(doc_id)), version)
                self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
                done.append(f"removed the unfinished document {source}")
            orphans = [int(str(r[0])) for r in found["orphans"]]
            if orphans:
                self._db.executemany(
                    "INSERT OR REPLACE INTO tombstones (chunk_id, version) VALUES (?, ?)",
                    [(i, version) for i in orphans],
                )
                self._db.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in orphans])
                done.append(f"removed {len(orphans)} chunk(s) of no document")
            for doc_id, source, _, actual in found["miscounted"]:
                self._db.execute("UPDATE documents SET chunks = ? WHERE id = ?", (actual, doc_id))
                done.append(f"recounted the chunks of {source} ({actual})")
            if graph.repair(self._db):
                done.append("removed knowledge-graph rows of missing chunks or entities")
            if found["unindexed"] or found["stray_keywords"]:
                self._db.execute("DELETE FROM chunks_fts")
                self._fill_keywords()
                done.append("rebuilt the keyword index from the chunks")
            if identity is not None:
                self.record_identity(identity)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return done

    @guarded
    def record_identity(self, identity: dict[str, object]) -> None:
        """Keep a copy of the manifest in the catalog (checked against manifest.json on open)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('identity', ?)",
                (json.dumps(identity, ensure_ascii=False),),
            )

    # --- writing (the caller holds the knowledge base's writer lock) ---------------------

    @guarded_iterator
    def embed_texts(
        self, batch: int = 256
    ) -> Iterator[tuple[list[int], list[tuple[str, str | None, str | None]]]]:
        """``(ids, [(text, heading, sheet)])`` batches of every chunk, by id (for re-embedding)."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, text, heading, sheet FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [r[0] for r in rows], [(r[1], r[2], r[3]) for r in rows]

    @guarded
    def replace_embeddings(
        self, identity: dict[str, object], batches: Iterable[tuple[list[int], np.ndarray]]
    ) -> int:
        """In one transaction: every chunk's vector replaced, and the new identity recorded
        (``kb reindex``). Returns the version committed; a failure leaves everything as it was.
        """
        version = self.begin()
        try:
            with self._lock:
                for ids, batch in batches:
                    vectors = np.ascontiguousarray(batch, dtype=np.float32)
                    self._db.executemany(
                        "UPDATE chunks SET embedding = ? WHERE id = ?",
                        ((vectors[i].tobytes(), chunk_id) for i, chunk_id in enumerate(ids)),
                    )
                # the graph's name vectors came from the old model: resolution by name only
                self._db.execute("UPDATE graph_entities SET vector = NULL")
            self.record_identity(identity)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return version

    @guarded
    def begin(self) -> int:
        """Start a write transaction; returns the version it will commit as."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            version = int(self._meta("version")) + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            return version

    @guarded
    def commit(self) -> None:
        """Make the current transaction durable."""
        with self._lock:
            self._db.execute("COMMIT")

    def rollback(self) -> None:
        """Undo the current transaction, if any."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    @guarded
    def put_document(
        self, source: str, *, name: str, sha256: str, size: int, fmt: str, version: int
    ) -> tuple[int, list[int]]:
        """Insert a document, or reset an existing one with the same source.

        Returns its id and the ids of the chunks it had (now removed).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM documents WHERE source = ?", (source,)
            ).fetchone()
            if row is None:
                cursor = self._db.execute(
                    "INSERT INTO documents (source, name, sha256, size, format, status, "
                    "added_at, updated_at) VALUES (?, ?, ?, ?, ?, 'ingesting', ?, ?)",
                    (source, name, sha256, size, fmt, now(), now()),
                )
                return int(cursor.lastrowid or 0), []
            doc_id = int(row[0])
            removed = self._remove_chunks(doc_id, version)
            self._db.execute(
                "UPDATE documents SET name = ?, sha256 = ?, size = ?, format = ?, "
                "status = 'ingesting', updated_at = ? WHERE id = ?",
                (name, sha256, size, fmt, now(), doc_id),
            )
            return doc_id, removed

    @guarded
    def add_chunks(
        self, doc_id: int, version: int, chunks: list[NewChunk], vectors: np.ndarray
    ) -> np.ndarray:
        """Store chunks with their vectors; returns their new ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.zeros(len(chunks), dtype=np.int64)
        with self._lock:
            for i, chunk in enumerate(chunks):
                cursor = self._db.execute(
                    "INSERT INTO chunks (doc_id, ordinal, text, page, heading, sheet, tokens, "
                    "text_hash, embedding, version, boxes, ocr) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        doc_id, chunk.ordinal, chunk.text, chunk.page, chunk.heading,
                        chunk.sheet, chunk.tokens, chunk.text_hash, vectors[i].tobytes(), version,
                        _boxes_json(chunk.boxes), chunk.ocr,
                    ),
                )  # fmt: skip
                ids[i] = int(cursor.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO chunks_fts (rowid, tokens) VALUES (?, ?)",
                [(int(i), c.keywords) for i, c in zip(ids, chunks, strict=True)],
            )
        return ids

    @guarded
    def finish_document(
        self, doc_id: int, chunks: int, pages: int | None, notes: list[str]
    ) -> None:
        """Mark a document complete with its final counts."""
        with self._lock:
            self._db.execute(
                "UPDATE documents SET chunks = ?, pages = ?, notes = ?, status = 'ready' "
                "WHERE id = ?",
                (chunks, pages, json.dumps(notes, ensure_ascii=False), doc_id),
            )

    @guarded
    def delete_document(self, doc_id: int, version: int) -> list[int]:
        """Delete a document and its chunks; returns the removed chunk ids."""
        with self._lock:
            removed = self._remove_chunks(doc_id, version)
            self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            return removed

    def _remove_chunks(self, doc_id: int, version: int) -> list[int]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
        self._db.executemany(
            "INSERT OR REPLACE INTO tombstones (chunk_id, version) VALUES (?, ?)",
            [(i, version) for i in ids],
        )
        self._db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in ids])
        self._db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        graph.prune(self._db)  # the chunks' mentions and evidence went with them (cascade)
        return ids


def _document(row: tuple[object, ...]) -> DocumentRecord:
    values = list(row)
    values[9] = json.loads(str(values[9]) or "[]")
    return DocumentRecord(*values)  # type: ignore[arg-type]


def _boxes_json(boxes: Sequence[Sequence[float]]) -> str | None:
    return json.dumps([[round(v, 4) for v in box] for box in boxes]) if boxes else None


def _boxes(stored: str | None) -> tuple[tuple[float, float, float, float], ...]:
    if not stored:
        return ()
    try:
        return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in json.loads(stored))
    except (ValueError, TypeError):  # a damaged layout loses its highlight, not its passage
        return ()
