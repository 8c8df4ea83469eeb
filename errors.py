"""The error tree of kb-assistant.

Every error the core raises on purpose is a ``KBError``. Messages say what happened, where
(which file, knowledge base or setting) and what to do about it. The edges (the ``kb`` command,
the Streamlit page) turn them into an exit code or an on-page message; the core never prints.

::

    KBError
    ├── ConfigError                  a setting is invalid (names the setting and the source)
    ├── KnowledgeBaseError           a knowledge base cannot be used as asked
    │   ├── KnowledgeBaseNotFound
    │   ├── KnowledgeBaseExists
    │   ├── InvalidName
    │   ├── KnowledgeBaseLocked      another process is writing to it
    │   ├── EmbeddingMismatch        built with another embedding model / dimension
    │   └── CorruptKnowledgeBase     a file of it is damaged or from a newer version
    ├── DocumentNotFound             `kb remove` named a document that is not there
    ├── SessionNotFound              `kb chat --session` named no saved conversation
    ├── TableError                   a file cannot become a table / a database cannot connect
    ├── UploadRejected               an upload too large, of the wrong type, or over the quota
    ├── QueryRejected                SQL that is not one read-only query over known tables
    ├── QueryTimeout                 SQL that ran past its time limit and was stopped
    ├── IngestError                  one file cannot be ingested (reported per file)
    │   ├── UnsupportedFormat
    │   ├── EmptyDocument
    │   ├── EncryptedDocument
    │   ├── CorruptDocument
    │   ├── HostileDocument          past a decompression limit, or XML declaring entities
    │   ├── ParserStopped            its parser ran past the time or memory limit; killed
    │   └── FileVanished
    └── ModelError                   a model cannot be found, loaded or run
        ├── ModelCrashed             the model's worker process died (names the signal and fix)
        └── ContextOverflow          a prompt that does not fit the context, even trimmed
"""

from __future__ import annotations


class KBError(Exception):
    """Base of every error kb-assistant raises on purpose."""


class ConfigError(KBError):
    """A setting is invalid."""


class KnowledgeBaseError(KBError):
    """A knowledge base cannot be used as asked."""


class KnowledgeBaseNotFound(KnowledgeBaseError):
    """The named knowledge base does not exist."""


class KnowledgeBaseExists(KnowledgeBaseError):
    """A knowledge base with that name already exists."""


class InvalidName(KnowledgeBaseError):
    """A knowledge-base name that cannot be used as a folder name."""


class KnowledgeBaseLocked(KnowledgeBaseError):
    """Another process holds the writer lock of the knowledge base."""


class EmbeddingMismatch(KnowledgeBaseError):
    """The knowledge base was built with a different embedding model."""


class CorruptKnowledgeBase(KnowledgeBaseError):
    """A file of the knowledge base is damaged, missing or from a newer version."""


class DocumentNotFound(KBError):
    """No document matches the given id, path or name."""


class SessionNotFound(KBError):
    """No saved conversation with that id."""


class TableError(KBError):
    """A file cannot become a table, or a database cannot be connected."""


class UploadRejected(KBError):
    """An uploaded file refused before it is stored: size, type or content."""


class QueryRejected(KBError):
    """SQL that breaks a safety rule, or that the database refused."""


class QueryFailed(QueryRejected):
    """Allowed SQL that is wrong: it does not parse, names an unknown table or column, or the
    engine stopped on another error. The agent may have the model repair it once."""


class QueryTimeout(KBError):
    """SQL that ran past its time limit and was interrupted."""


class IngestError(KBError):
    """One file cannot be ingested; the batch goes on without it."""


class UnsupportedFormat(IngestError):
    """The file's type is not one kb-assistant can read."""


class EmptyDocument(IngestError):
    """The file holds no text to index."""


class EncryptedDocument(IngestError):
    """The file is encrypted and needs a password."""


class CorruptDocument(IngestError):
    """The file is damaged or not what its extension says."""


class HostileDocument(IngestError):
    """The file's structure is built to exhaust the machine (a bomb); refused unparsed."""


class ParserStopped(IngestError):
    """Parsing the file ran past its time or memory limit; the parser was stopped."""


class FileVanished(IngestError):
    """The file disappeared or became unreadable while it was being ingested."""


class ModelError(KBError):
    """A model cannot be found, loaded or run."""


class ModelCrashed(ModelError):
    """The model's worker process died (a native crash, or killed); the next call starts
    another."""


class ContextOverflow(ModelError):
    """The prompt does not fit the model's context window, even with fewer sources."""


class ModelBusy(ModelError):
    """The model's queue is full: the request was turned away at once, not queued.
    ``retry_after`` (seconds) estimates when a place should be free."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiKeyError(KBError):
    """An API key name that is invalid, taken or unknown, or an unreadable keys file."""
