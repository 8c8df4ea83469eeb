"""Conversations (saved chats), stored in ``<home>/chats.sqlite`` so that one can be resumed.

Storage only: the answering chain turns stored turns into its history
(``chains.rag.history_from``) and the app writes the Markdown export (``ui.render``). The
table and column names (``sessions``, ``session_id``) are those of the file as it always was.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kb_assistant.errors import SessionNotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, title TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    question TEXT NOT NULL, answer TEXT NOT NULL, refused INTEGER NOT NULL,
    citations TEXT NOT NULL, trace TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, id);
"""


@dataclass(frozen=True)
class ConversationInfo:
    """One line of ``kb chat --list``."""

    session_id: str
    kb: str
    title: str
    turns: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class StoredTurn:
    """A question and its answer as stored."""

    question: str
    answer: str
    refused: bool
    citations: list[dict[str, Any]]
    trace: dict[str, Any]
    created_at: str


ID_LENGTH = 12
ID_PATTERN = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")  # what ``create`` makes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ConversationStore:
    """All conversations of one data directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def create(self, kb: str, title: str = "") -> str:
        """A new empty conversation; returns its id."""
        session_id = uuid.uuid4().hex[:ID_LENGTH]
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                (session_id, kb, title.strip()[:80], _now(), _now()),
            )
        return session_id

    def get(self, session_id: str, *, prefix: bool = True) -> ConversationInfo:
        """A conversation by id; with ``prefix`` (people typing ids), a unique prefix of the id
        works too, and without it (callers that hold ids) only the whole id.

        Raises:
            SessionNotFound: naming how to list conversations.
        """
        if prefix:  # LIKE, with its wildcards taken literally
            where = "s.id LIKE ? ESCAPE '\\'"
            key = re.sub(r"([\\%_])", r"\\\1", session_id) + "%"
        else:
            where, key = "s.id = ?", session_id
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.kb, s.title, count(m.id), s.created_at, s.updated_at "
                f"FROM sessions s LEFT JOIN messages m ON m.session_id = s.id "
                f"WHERE {where} GROUP BY s.id",
                (key,),
            ).fetchall()
        if len(rows) != 1 or not session_id:
            raise SessionNotFound(
                f"no conversation '{session_id}'"
                + (" (the prefix matches several)" if len(rows) > 1 else "")
                + "; 'kb chat --list' lists them"
            )
        return ConversationInfo(*rows[0])

    def conversations(self) -> list[ConversationInfo]:
        """All conversations, most recent first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.kb, s.title, count(m.id), s.created_at, s.updated_at "
                "FROM sessions s LEFT JOIN messages m ON m.session_id = s.id "
                "GROUP BY s.id ORDER BY s.updated_at DESC, s.rowid DESC"
            ).fetchall()
        return [ConversationInfo(*r) for r in rows]

    def add(
        self,
        session_id: str,
        question: str,
        answer: str,
        *,
        refused: bool,
        citations: list[dict[str, Any]],
        trace: dict[str, Any],
    ) -> None:
        """Append a turn; the first question becomes the title of an untitled conversation."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO messages (session_id, question, answer, refused, citations, trace, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, question, answer, int(refused),
                 json.dumps(citations, ensure_ascii=False), json.dumps(trace, ensure_ascii=False),
                 _now()),
            )  # fmt: skip
            self._db.execute(
                "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? "
                "ELSE title END WHERE id = ?",
                (_now(), question.strip()[:80], session_id),
            )
            self._db.execute("COMMIT")

    def turns(self, session_id: str) -> list[StoredTurn]:
        """Every turn of a conversation, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT question, answer, refused, citations, trace, created_at FROM messages "
                "WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        return [
            StoredTurn(q, a, bool(r), json.loads(c), json.loads(t), at)
            for q, a, r, c, t, at in rows
        ]

    def rename(self, session_id: str, title: str) -> None:
        """Give a conversation a new title."""
        info = self.get(session_id)
        with self._lock:
            self._db.execute(
                "UPDATE sessions SET title = ? WHERE id = ?", (title.strip()[:80], info.session_id)
            )

    def delete(self, session_id: str) -> None:
        """Delete a conversation and its turns."""
        info = self.get(session_id)
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (info.session_id,))
