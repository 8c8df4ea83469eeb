"""API keys of ``kb serve``: made once, shown once, stored only as salted hashes.

``<home>/api_keys.json`` (mode 0600, replaced atomically) holds for each key its name, when it
was made, its HMAC-SHA256 under a salt of its own (``"scheme": "hmac-sha256"``), and the last
four characters of a fingerprint so that ``kb serve keys list`` can tell keys apart without
showing any. A running server rereads the file when it changes (inode, size, mtime or ctime),
so a revoked key stops working at once.

A slow password hash (scrypt) would buy nothing here: keys are 256 random bits, beyond any
guessing, and a slow check would let every wrong key cost the server tens of milliseconds. A
check is one HMAC per stored key, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kb_assistant.errors import ApiKeyError
from kb_assistant.vectorstore.files import atomic_writer

KEYS_FILE = "api_keys.json"
KEY_PREFIX = "kb-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCHEME = "hmac-sha256"  # how "hash" is made; a file with another one is refused, not misread


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key."""

    name: str
    created: str
    fingerprint: str  # the last 4 characters of the key's SHA-256

    def to_json(self) -> dict[str, str]:
        """For ``kb serve keys list --json``."""
        return {"name": self.name, "created": self.created, "fingerprint": self.fingerprint}


def _hash(key: str, salt: bytes) -> bytes:
    return hmac.new(salt, key.encode(), hashlib.sha256).digest()


class KeyStore:
    """The API keys of one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._stamp: tuple[int, int, int, int] | None = None

    # --- reading ------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int, int] | None:
        """What tells a changed file: the atomic replace gives a new inode, and ctime moves
        even when a copy keeps the old mtime and size."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def _entries_now(self) -> list[dict[str, Any]]:
        """The stored entries, reread when the file changed (caller holds the lock)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._entries = self._read() if stamp is not None else []
            self._stamp = stamp
        return self._entries

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["keys"]
            if not isinstance(entries, list) or not all(
                isinstance(e, dict) and {"name", "salt", "hash"} <= set(e) for e in entries
            ):
                raise ValueError("'keys' is not a list of keys")
            schemes = {e.get("scheme") for e in entries} - {SCHEME}
            if schemes:
                raise ValueError(
                    f"keys hashed with {', '.join(map(str, schemes))}, not {SCHEME} (written "
                    "by another version of kb-assistant)"
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ApiKeyError(
                f"{self.path}: cannot read the API keys ({exc}); fix or delete the file, then "
                "add keys again with 'kb serve keys add NAME'"
            ) from exc
        return entries

    def infos(self) -> list[KeyInfo]:
        """Every key's name, creation time and fingerprint (never the key)."""
        with self._lock:
            return [
                KeyInfo(e["name"], e.get("created", ""), e.get("fingerprint", ""))
                for e in self._entries_now()
            ]

    def any(self) -> bool:
        """Whether at least one key exists (then every request must bring one)."""
        with self._lock:
            return bool(self._entries_now())

    def verify(self, key: str) -> str | None:
        """The name of the key ``key`` is, or None: compared in constant time with every
        stored hash (one HMAC each, microseconds).

        Raises:
            ApiKeyError: the file cannot be read.
        """
        with self._lock:
            entries = self._entries_now()
        found = None
        for entry in entries:
            computed = _hash(key, base64.b64decode(entry["salt"]))
            if hmac.compare_digest(computed, base64.b64decode(entry["hash"])):
                found = str(entry["name"])
        return found

    # --- changing -----------------------------------------------------------------------

    def add(self, name: str) -> str:
        """Make a key named ``name``; returns it (the only time it is ever shown).

        Raises:
            ApiKeyError: the name is unusable or taken.
        """
        if not _NAME.match(name):
            raise ApiKeyError(
                f"'{name}' cannot name an API key: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with self._lock:
            entries = list(self._entries_now())
            if any(e["name"] == name for e in entries):
                raise ApiKeyError(
                    f"an API key named '{name}' exists; revoke it first "
                    f"('kb serve keys revoke {name}') or choose another name"
                )
            entries.append({
                "name": name,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "fingerprint": hashlib.sha256(key.encode()).hexdigest()[-4:],
                "salt": base64.b64encode(salt).decode(),
                "scheme": SCHEME,
                "hash": base64.b64encode(_hash(key, salt)).decode(),
            })  # fmt: skip
            self._write(entries)
        return key

    def revoke(self, name: str) -> None:
        """Delete the key named ``name``; requests with it fail from now on.

        Raises:
            ApiKeyError: no key has that name.
        """
        with self._lock:
            entries = self._entries_now()
            kept = [e for e in entries if e["name"] != name]
            if len(kept) == len(entries):
                names = ", ".join(e["name"] for e in entries) or "none"
                raise ApiKeyError(f"no API key named '{name}' (keys: {names})")
            self._write(kept)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        """Replace the file atomically, readable by its owner only (caller holds the lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": 1, "keys": entries}, indent=2).encode()
        with atomic_writer(self.path) as fh:
            os.fchmod(fh.fileno(), 0o600)  # before a byte of it is written
            fh.write(data)
        self._entries, self._stamp = entries, self._stat()
