"""What stands in front of every request of ``kb serve``: where it may listen, the API key, and
how large a request may be.

Listening beyond loopback is refused unless API keys exist. With keys, every request but
``/health`` and the offline API docs (which hold no data; their "Authorize" button takes the
key) must carry ``Authorization: Bearer <key>``; beyond loopback keys stay required even when
the last one is revoked while the server runs (then nothing but the open paths is answered).

Without keys on loopback, anything running on this machine may use the server — but web pages
must not: a page may POST a form or an upload to ``127.0.0.1`` without a CORS preflight, and
DNS rebinding lets a page read answers through a name of its own. So a server bound to
loopback answers only requests addressed to a loopback name (the ``Host`` header), and any
server refuses a request with an ``Origin`` other than its own or one in
``serve_cors_origins``. Bodies are capped while they arrive — by
``Content-Length`` when sent, else byte by byte — uploads at ``max_upload_mb``, the rest at
``JSON_LIMIT``: a larger request is answered 413 before it is read.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import anyio
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kb_assistant.api.keys import KeyStore
from kb_assistant.errors import ApiKeyError, ConfigError

JSON_LIMIT = 1 << 20  # bytes of a request that is not an upload
UPLOAD_SLACK = 1 << 20  # multipart framing on top of the files themselves
_UPLOAD_PATH = re.compile(r"^/kbs/[^/]+/documents/?$")
OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PREFIXES = ("/static-offline-docs/",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; other names do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: KeyStore) -> None:
    """Refuse to listen beyond this machine without API keys.

    Raises:
        ConfigError: ``host`` is not loopback and no key exists.
    """
    if not is_loopback(host) and not keys.any():
        raise ConfigError(
            f"refusing to listen on {host}: beyond this machine every request must carry an "
            "API key, and none exists. Add one with 'kb serve keys add NAME' (or serve on "
            "127.0.0.1)"
        )


def error_json(message: str, kind: str, code: str | None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[Any]) -> None:
    """A whole JSON response from ASGI middleware."""
    raw = json.dumps(body).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + headers})
    await send({"type": "http.response.body", "body": raw})


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8765`` -> ``[::1]``)."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


class CheckOrigin:
    """ASGI middleware: 400 for a ``Host`` that is not a loopback name (when bound to
    loopback), 403 for an ``Origin`` that is neither this server's own nor in
    ``serve_cors_origins`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, loopback: bool, origins: list[str]) -> None:
        self.app = app
        self.loopback = loopback
        self.origins = set(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback and host and not is_loopback(host_name(host)):
            message = (
                f"this server answers requests for 127.0.0.1, localhost or [::1] only, not for "
                f"'{host}' (it listens on loopback; a web page reaching it through another name "
                "is refused)"
            )
            await send_json(send, 400, error_json(message, "invalid_request_error",
                                                  "host_not_allowed"), [])  # fmt: skip
            return
        origin = headers.get(b"origin")
        if origin is not None and not self._allowed(origin.decode("latin-1"), host):
            message = (
                f"requests from web pages at '{origin.decode('latin-1')}' are refused; to allow "
                "that origin, list it in the serve_cors_origins setting"
            )
            await send_json(send, 403, error_json(message, "invalid_request_error",
                                                  "origin_not_allowed"), [])  # fmt: skip
            return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin in self.origins or "*" in self.origins:
            return True
        scheme, _, rest = origin.partition("://")
        # the server's own pages (/docs "Try it out") send their own origin
        return bool(host) and scheme in ("http", "https") and rest == host


class RequireKey:
    """ASGI middleware: with keys stored, no key (or a wrong one) gets 401; so does every
    request when ``required`` (bound beyond loopback) and no key exists any more. A keys file
    that cannot be read gets 503 with its message."""

    def __init__(self, app: ASGIApp, keys: KeyStore, required: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.required = required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        try:
            # the file is stat-ed (and reread when changed): off the event loop
            name, refusal = await anyio.to_thread.run_sync(self._check, scheme, key.strip())
        except ApiKeyError as exc:
            await send_json(send, 503, error_json(str(exc), "server_error",
                                                  "api_keys_unreadable"), [])  # fmt: skip
            return
        if name is not None:
            if name:
                scope.setdefault("state", {})["api_key"] = name
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, error_json(refusal, "invalid_request_error", "invalid_api_key"),
                        [(b"www-authenticate", b"Bearer")])  # fmt: skip

    def _check(self, scheme: str, key: str) -> tuple[str | None, str]:
        """The key's name ("" when no key is needed), or None and why not.

        Raises:
            ApiKeyError: the keys file cannot be read.
        """
        if not self.keys.any():
            if self.required:
                return None, "no API keys exist; add one with 'kb serve keys add NAME'"
            return "", ""
        if scheme.lower() == "bearer" and key:
            name = self.keys.verify(key)
            return (name, "") if name is not None else (None, "invalid API key")
        return None, (
            "this server needs an API key: send the header 'Authorization: Bearer <key>' "
            "(keys are made with 'kb serve keys add NAME')"
        )


class LimitBody:
    """ASGI middleware: 413 for a request body over its limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit + UPLOAD_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and bool(_UPLOAD_PATH.match(scope.get("path", "")))
        limit = self.upload_limit if upload else JSON_LIMIT
        what = (
            f"an upload may hold {self.upload_limit - UPLOAD_SLACK >> 20} MB of files "
            "(the max_upload_mb setting)"
            if upload
            else f"a request body may hold {limit >> 20} MB"
        )
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            body = error_json(f"request too large: {what}", "invalid_request_error",
                              "request_too_large")  # fmt: skip
            await send_json(send, 413, body, [(b"connection", b"close")])
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request too large: {what}")
            return message

        await self.app(scope, counted, send)
