"""A knowledge base's vectors in Milvus: Milvus Lite in its folder, or a Milvus server.

One collection per knowledge base: primary key ``id`` (INT64, the catalog's chunk id) and
``vector`` (FLOAT_VECTOR), searched by COSINE (the vectors are unit length, so the scores are
the same cosines FAISS returns). Up to ``EXACT_UP_TO`` vectors the index is ``FLAT`` (exact, the
same results as FAISS); past it ``AUTOINDEX`` (HNSW, searched with ``ef`` = ``SEARCH_EF``),
chosen again by ``needs_rebuild`` as the knowledge base grows or shrinks. The threshold is lower
than FAISS's because Milvus Lite's FLAT is a NumPy scan: at 10^5 vectors of 384 numbers a query
took 242 ms (p50) against 11 ms for FAISS flat, and its HNSW 36 ms with recall@10 1.0
(``bench/vector_stores.py`` on two busy cores).

Readers use the name of an alias (``kb_<name>_<dimension>_<hash>``); the alias points at a
physical collection (alias + random suffix). A rebuild fills a new collection and then moves the
alias, so a reader never searches a half-built one.

The catalog version the collection reflects is a collection property, written only after the
vectors it describes: a crash between the catalog commit and the upsert (or between the upsert
and the stamp) leaves the stamp behind the catalog, and the next open replays the difference.
Replay is idempotent (upsert by primary key, delete by id), so nothing is ever duplicated. A
collection that is newer than the catalog, never stamped, of another dimension or built for
another embedding model (a property set when it is created) is rebuilt.

Milvus Lite (milvus-lite 3.x) runs inside this process as a local gRPC server over the folder
``milvus.db``; it serves one process at a time (an advisory lock on ``milvus.db/LOCK``), so a
second process opening the same knowledge base is told so clearly. A server has no such limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kb_assistant.errors import (
    ConfigError,
    CorruptKnowledgeBase,
    KnowledgeBaseError,
    KnowledgeBaseLocked,
)
from kb_assistant.vectorstore.manifest import Manifest
from kb_assistant.vectorstore.vector_store import Batches

logger = logging.getLogger(__name__)

LITE_NAME = "milvus.db"  # Milvus Lite's data folder inside the knowledge base folder
VERSION_KEY = "kb.catalog_version"
MODEL_KEY = "kb.embedding_model"  # the model a collection was built for (a reindex may keep
# the dimension, and so the alias: the old model's collection must never pass for the new one)
UPSERT_ROWS = 2_000  # rows per request: 2000 x 384 floats is ~3 MB, well under gRPC's limits
CONNECT_TIMEOUT = 10.0  # seconds to wait for a server
SEARCH_EF = 128  # HNSW candidates per query (AUTOINDEX); see bench/vector_stores.py
EXACT_UP_TO = 10_000  # vectors searched exactly (FLAT); past it, AUTOINDEX
INSTALL_HINT = "pip install 'kb-assistant[milvus]'"
PHYSICAL_HEX = 12  # a physical collection is named alias + '_' + this many random hex digits
PHYSICAL_SUFFIX = rf"_[0-9a-f]{{{PHYSICAL_HEX}}}"

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Milvus Lite data folder -> open backends in this process


def collection_name(folder: Path, manifest: Manifest) -> str:
    """The alias searched for the knowledge base in ``folder``.

    Milvus names allow ASCII letters, digits and '_', so other characters of the knowledge
    base's name become '_'; the hash of the name and creation time keeps two knowledge bases
    apart on one server (two homes, or names that sanitise alike).
    """
    ascii_name = re.sub(r"[^A-Za-z0-9_]", "_", folder.name)[:40]
    digest = hashlib.sha256(f"{folder.name}\0{manifest.created_at}".encode()).hexdigest()[:8]
    return f"kb_{ascii_name}_{manifest.dimension}_{digest}"


@contextmanager
def milvus_errors(label: str, what: str) -> Iterator[None]:
    """Turn a Milvus failure into a ``KnowledgeBaseError`` naming the collection and the fix."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise KnowledgeBaseError(
            f"{label}: Milvus could not {what} ({exc}); check that Milvus is running and "
            "reachable (nothing is lost: the catalog keeps every vector, and the next open "
            "brings the collection up to date)"
        ) from exc


def _client_class() -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ConfigError(
            f"vector_store = 'milvus' needs pymilvus, which is not installed: {INSTALL_HINT}"
        ) from exc
    return MilvusClient


class MilvusIndex:
    """Search and updates over one knowledge base's Milvus collection (through its alias)."""

    shared = True

    def __init__(
        self,
        client: Any,
        name: str,
        dimension: int,
        index_type: str,
        label: str = "",
        *,
        lite: bool = False,
    ) -> None:
        self._client = client
        self.lite = lite
        self.name = name
        self.label = label or f"Milvus collection '{name}'"
        self.dimension = dimension
        self.index_type = index_type

    @property
    def kind(self) -> str:
        """``milvus:FLAT`` (exact) or ``milvus:AUTOINDEX``."""
        return f"milvus:{self.index_type}"

    @property
    def count(self) -> int:
        """Number of vectors in the collection (a strongly consistent count)."""
        with milvus_errors(self.label, "count the vectors"):
            rows = self._client.query(
                self.name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        """Every chunk id in the collection (paged, so 10^6 ids never sit in one reply)."""
        with milvus_errors(self.label, "list the vector ids"):
            parts = [np.asarray(batch, dtype=np.int64) for batch in self._id_batches()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _id_batches(self) -> Iterator[list[int]]:
        if self.lite:  # no result window to page around, and no iterator timestamps
            count = self.count
            if count:
                rows = self._client.query(self.name, filter="", output_fields=["id"], limit=count)
                yield [int(row["id"]) for row in rows]
            return
        pages = self._client.query_iterator(
            self.name, batch_size=10_000, filter="", output_fields=["id"]
        )
        try:
            while rows := pages.next():
                yield [int(row["id"]) for row in rows]
        finally:
            pages.close()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert vectors under chunk ids: adding one that is there replaces it."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), UPSERT_ROWS):
            part = slice(start, start + UPSERT_ROWS)
            data = [
                {"id": int(i), "vector": v}
                for i, v in zip(ids[part].tolist(), rows[part], strict=True)
            ]
            with milvus_errors(self.label, "store vectors"):
                self._client.upsert(self.name, data)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Delete the vectors of these chunk ids; returns how many were asked (Milvus does not
        say how many it held)."""
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).tolist()]
        for start in range(0, len(wanted), 10_000):
            with milvus_errors(self.label, "delete vectors"):
                self._client.delete(self.name, ids=wanted[start : start + 10_000])
        return len(wanted)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest chunk ids with their cosine similarity, best first."""
        if k <= 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if self.index_type != "FLAT":  # HNSW: how many candidates a query explores
            params["params"] = {"ef": max(SEARCH_EF, k)}
        with milvus_errors(self.label, "search"):
            found = self._client.search(
                self.name, data=[query], limit=k, anns_field="vector", output_fields=["id"],
                search_params=params, consistency_level="Strong",
            )  # fmt: skip
        return [(int(hit["id"]), float(hit["distance"])) for hit in found[0]]

    def needs_rebuild(self) -> bool:
        """Whether the index type no longer fits the size (FLAT past ``EXACT_UP_TO``, AUTOINDEX
        below half of it)."""
        if self.index_type == "FLAT":
            return self.count > EXACT_UP_TO
        return self.count < EXACT_UP_TO // 2


class MilvusBackend:
    """Where a knowledge base's collection lives: Milvus Lite in its folder, or a server."""

    shared = True

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        *,
        uri: str = "",
        token: str = "",
        index_type: str | None = None,
    ) -> None:
        self.lite = not uri
        self.index_type = index_type  # None: FLAT up to EXACT_UP_TO vectors, else AUTOINDEX
        self.uri = str(folder / LITE_NAME) if self.lite else uri
        self.token = token
        self.dimension = manifest.dimension
        self.model = manifest.embedding_model
        self.name = collection_name(folder, manifest)
        where = f"Milvus Lite {self.uri}" if self.lite else f"Milvus at {uri}"
        self.title = f"Milvus collection '{self.name}'"
        self.label = f"{self.title} ({where})"
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The connection, opened on first use.

        Raises:
            ConfigError: pymilvus (or milvus-lite, for a local file) is not installed.
            KnowledgeBaseLocked: another process has this Milvus Lite file open.
            KnowledgeBaseError: the server cannot be reached or refused the token.
        """
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        client_class = _client_class()
        if self.lite:
            try:
                import milvus_lite  # noqa: F401
            except ImportError as exc:
                raise ConfigError(
                    f"milvus_uri is empty (Milvus Lite) but milvus-lite is not installed: "
                    f"{INSTALL_HINT}, or set milvus_uri to a Milvus server"
                ) from exc
            self._lite_acquire()
        try:
            return client_class(
                uri=self.uri, token=self.token, timeout=CONNECT_TIMEOUT, dedicated=True
            )
        except Exception as exc:  # pymilvus raises its own tree, and gRPC errors besides
            if self.lite:
                self._lite_release()
                raise _lite_error(Path(self.uri), exc) from exc
            raise KnowledgeBaseError(
                f"cannot connect to Milvus at {self.uri} ({exc}); start the server, or correct "
                "milvus_uri / milvus_token (or set vector_store = 'faiss')"
            ) from exc

    def _lite_acquire(self) -> None:
        with _lite_lock:
            _lite_users[self.uri] = _lite_users.get(self.uri, 0) + 1

    def _lite_release(self) -> None:
        """Stop this process's Milvus Lite server for the folder when its last user closes,
        which frees the folder for another process."""
        with _lite_lock:
            users = _lite_users.get(self.uri, 0) - 1
            if users > 0:
                _lite_users[self.uri] = users
                return
            _lite_users.pop(self.uri, None)
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def close(self) -> None:
        """Close the connection (and, for Milvus Lite, its server once nothing uses it)."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()
        if self.lite:
            self._lite_release()

    def _physical(self, client: Any) -> str | None:
        """The collection the alias points at (None: there is none)."""
        if self.name not in client.list_aliases().get("aliases", []):
            return None
        return str(client.describe_alias(self.name)["collection_name"])

    def load(self) -> tuple[MilvusIndex, int]:
        """The collection and the catalog version stamped on it.

        Raises:
            FileNotFoundError: the knowledge base has no collection yet.
            CorruptKnowledgeBase: it was never finished or is of another dimension.
        """
        with milvus_errors(self.label, "open the collection"):
            return self._load(self.client())

    def _load(self, client: Any) -> tuple[MilvusIndex, int]:
        physical = self._physical(client)
        if physical is None or not client.has_collection(physical):
            raise FileNotFoundError(self.label)
        info = client.describe_collection(physical)
        vector = next((f for f in info["fields"] if f["name"] == "vector"), None)
        dimension = int(vector["params"].get("dim", 0)) if vector else 0
        if dimension != self.dimension:
            raise CorruptKnowledgeBase(f"{self.label} is damaged (dimension {dimension})")
        properties = info.get("properties", {})
        model = properties.get(MODEL_KEY)
        if model != self.model:
            raise CorruptKnowledgeBase(
                f"{self.label} was built for embedding model '{model}', not '{self.model}'"
            )
        stamp = properties.get(VERSION_KEY)
        if stamp is None:
            raise CorruptKnowledgeBase(f"{self.label} is damaged (its build never finished)")
        if client.get_load_state(physical)["state"].name != "Loaded":
            client.load_collection(physical)  # a server unloads collections on restart
        index_type = str(client.describe_index(physical, "vector").get("index_type", "FLAT"))
        return MilvusIndex(
            client, self.name, self.dimension, index_type, self.label, lite=self.lite
        ), int(stamp)

    def build(
        self, count: int, batches: Batches, sample: Callable[[int], np.ndarray]
    ) -> MilvusIndex:
        """Fill a new collection with every vector, then point the alias at it.

        Unstamped until ``save``; the collection it replaces, and any left by a build that was
        killed, are dropped once the alias has moved.
        """
        del sample  # Milvus trains its own index
        client = self.client()
        index_type = self.index_type or ("FLAT" if count <= EXACT_UP_TO else "AUTOINDEX")
        physical = f"{self.name}_{uuid.uuid4().hex[:PHYSICAL_HEX]}"
        with milvus_errors(self.label, "create a collection"):
            self._create(client, physical, index_type)
        filling = MilvusIndex(client, physical, self.dimension, index_type, self.label)
        for ids, vectors in batches:
            filling.add(ids, vectors)
        with milvus_errors(self.label, "switch to the rebuilt collection"):
            if self._physical(client) is None:
                client.create_alias(physical, self.name)
            else:
                client.alter_alias(physical, self.name)
            self._drop_collections(client, keep=physical)
        return MilvusIndex(
            client, self.name, self.dimension, index_type, self.label, lite=self.lite
        )

    def _create(self, client: Any, physical: str, index_type: str) -> None:
        from pymilvus import DataType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="COSINE")
        client.create_collection(physical, schema=schema, consistency_level="Strong")
        client.alter_collection_properties(physical, properties={MODEL_KEY: self.model})
        # Not waited for: the collection is empty, and Milvus Lite cannot be asked to wait.
        client.create_index(physical, params, sync=False)
        client.load_collection(physical)

    def _drop_collections(self, client: Any, keep: str | None) -> None:
        """Drop this knowledge base's collections but ``keep``: exactly the names ``build``
        gives (alias + '_' + 12 hex digits), never another's that merely starts alike."""
        ours = re.compile(re.escape(self.name) + PHYSICAL_SUFFIX)
        for name in client.list_collections():
            if ours.fullmatch(name) and name != keep:
                client.drop_collection(name)

    def save(self, store: Any, version: int) -> None:
        """Stamp the collection with the catalog version its vectors now reflect."""
        del store  # the stamp lives on the collection the alias names
        client = self.client()
        with milvus_errors(self.label, "record the catalog version"):
            physical = self._physical(client)
            if physical is None:
                raise KnowledgeBaseError(f"{self.label} vanished while it was being written")
            client.alter_collection_properties(physical, properties={VERSION_KEY: str(version)})

    def discard(self) -> None:
        """Drop the alias and every collection of this knowledge base."""
        client = self.client()
        with milvus_errors(self.label, "drop the collection"):
            if self._physical(client) is not None:
                client.drop_alias(self.name)
            self._drop_collections(client, keep=None)


def _lite_error(path: Path, exc: BaseException) -> KnowledgeBaseError:
    """Say why Milvus Lite would not open ``path``: most often another process has it."""
    if _held_elsewhere(path / "LOCK"):
        return KnowledgeBaseLocked(
            f"{path} is open in another process, and Milvus Lite serves one process at a time; "
            "close the other one (the app, 'kb serve', another 'kb' command), or point "
            "milvus_uri at a Milvus server to share a knowledge base between processes"
        )
    return KnowledgeBaseError(
        f"Milvus Lite could not open {path} ({exc}); if it is damaged, delete that folder: it "
        "is rebuilt from the catalog on the next open (the catalog keeps every vector)"
    )


def _held_elsewhere(lock: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: Milvus Lite locks there too; say the likely cause
        return True
    try:
        fd = lock.open("rb")
    except OSError:
        return False
    with fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
    return False
