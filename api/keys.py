"""API keys of ``kb serve``: made once, shown once, stored only as salted hashes.

``<home>/api_keys.json`` (mode 0600, replaced atomically) holds for each key its name, when it
was made, a scrypt hash with its own salt, and the last four characters of a fingerprint so
that ``kb serve keys list`` can tell keys apart without showing any. A running server rereads
the file when it changes, so a revoked key stops working at once. Checking a key costs one
scrypt per stored key; a key that passed is remembered (by its SHA-256, in memory only) so
later requests with it cost nothing.
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
# scrypt's cost: about 16 MiB and a few tens of milliseconds per check.
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key."""

    name: str
    created: str
    fingerprint: str  # the last 4 characters of the key's SHA-256

    def to_json(self) -> dict[str, str]:
        """For ``kb serve keys list --json``."""
        return {"name": self.name, "created": self.created, "fingerprint": self.fingerprint}


def _hash(key: str, salt: bytes, n: int = _N, r: int = _R, p: int = _P) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


class KeyStore:
    """The API keys of one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._stamp: tuple[int, int] | None = None
        self._passed: dict[str, str] = {}  # sha256 of a key that passed -> its name

    # --- reading ------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _entries_now(self) -> list[dict[str, Any]]:
        """The stored entries, reread when the file changed (caller holds the lock)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._entries = self._read() if stamp is not None else []
            self._stamp = stamp
            self._passed.clear()
        return self._entries

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["keys"]
            if not isinstance(entries, list) or not all(
                isinstance(e, dict) and {"name", "salt", "hash"} <= set(e) for e in entries
            ):
                raise ValueError("'keys' is not a list of keys")
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
        """The name of the key ``key`` is, or None: compared in constant time with each
        stored hash."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            entries = self._entries_now()
            if digest in self._passed:
                return self._passed[digest]
        found = None
        for entry in entries:
            salt = base64.b64decode(entry["salt"])
            params = entry.get("scrypt", {})
            computed = _hash(key, salt, params.get("n", _N), params.get("r", _R),
                             params.get("p", _P))  # fmt: skip
            if hmac.compare_digest(computed, base64.b64decode(entry["hash"])):
                found = str(entry["name"])
        if found is not None:
            with self._lock:
                if self._entries is entries:  # not revoked meanwhile
                    self._passed[digest] = found
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
                "hash": base64.b64encode(_hash(key, salt)).decode(),
                "scrypt": {"n": _N, "r": _R, "p": _P},
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
        self._passed.clear()
