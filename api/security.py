"""What stands in front of every request of ``kb serve``: where it may listen, the API key, and
how large a request may be.

Listening beyond loopback is refused unless API keys exist. With keys, every request but
``/health`` and the offline API docs (which hold no data; their "Authorize" button takes the
key) must carry ``Authorization: Bearer <key>``. Bodies are capped while they arrive — by
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
from kb_assistant.errors import ConfigError

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


class RequireKey:
    """ASGI middleware: with keys stored, no key (or a wrong one) gets 401."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        if not self.keys.any():
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            # scrypt takes tens of milliseconds: not on the event loop
            name = await anyio.to_thread.run_sync(self.keys.verify, key.strip())
            if name is not None:
                scope.setdefault("state", {})["api_key"] = name
                await self.app(scope, receive, send)
                return
        message = (
            "invalid API key" if key.strip() else
            "this server needs an API key: send the header 'Authorization: Bearer <key>' "
            "(keys are made with 'kb serve keys add NAME')"
        )  # fmt: skip
        await send_json(send, 401, error_json(message, "invalid_request_error", "invalid_api_key"),
                        [(b"www-authenticate", b"Bearer")])  # fmt: skip


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
