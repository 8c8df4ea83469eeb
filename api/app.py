"""The HTTP face of kb-assistant: ``create_app(assistant, settings)`` builds the FastAPI app
that ``kb serve`` runs on uvicorn.

Two routers over the same ``Assistant``: an OpenAI-compatible one (``/v1``: chat completions,
embeddings, models) so that existing tools can use a knowledge base as if it were a model, and
a native one for what the ``kb`` command does. Every use of the chat model passes the fair
queue (``models.queue``). kb-assistant's errors become 4xx answers with their message in
OpenAI's error shape (5xx for the server's own trouble: a model, a knowledge base or a setting
that cannot be used); nothing answers with a traceback. ``/docs`` is served from files
installed with fastapi-offline, never from a CDN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from kb_assistant.api.jobs import JobBoard
from kb_assistant.api.keys import KEYS_FILE, KeyStore
from kb_assistant.api.security import CheckOrigin, LimitBody, RequireKey, error_json, is_loopback
from kb_assistant.errors import (
    ConfigError,
    DocumentNotFound,
    EmbeddingMismatch,
    InvalidName,
    KBError,
    KnowledgeBaseError,
    KnowledgeBaseExists,
    KnowledgeBaseLocked,
    KnowledgeBaseNotFound,
    ModelBusy,
    ModelError,
    SessionNotFound,
)
from kb_assistant.models.queue import ModelQueue

if TYPE_CHECKING:
    from kb_assistant.assistant import Assistant
    from kb_assistant.settings import Settings

logger = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its answer.
_STATUS: tuple[tuple[type[KBError], int, str, str], ...] = (
    (ModelBusy, 429, "rate_limit_error", "model_busy"),
    (KnowledgeBaseNotFound, 404, "invalid_request_error", "knowledge_base_not_found"),
    (DocumentNotFound, 404, "invalid_request_error", "document_not_found"),
    (SessionNotFound, 404, "invalid_request_error", "conversation_not_found"),
    (KnowledgeBaseExists, 409, "invalid_request_error", "knowledge_base_exists"),
    (KnowledgeBaseLocked, 409, "invalid_request_error", "knowledge_base_locked"),
    (EmbeddingMismatch, 409, "invalid_request_error", "embedding_mismatch"),
    (ModelError, 503, "server_error", "model_unavailable"),
    (InvalidName, 400, "invalid_request_error", "invalid_name"),
    # the rest (CorruptKnowledgeBase, a vector store that cannot be reached): not the request's
    # fault, and it may pass
    (KnowledgeBaseError, 503, "server_error", "knowledge_base_unavailable"),
    (ConfigError, 500, "server_error", "server_misconfigured"),
)


@dataclass
class Server:
    """What every endpoint reaches through ``request.app.state.server``."""

    assistant: Assistant
    settings: Settings
    queue: ModelQueue
    jobs: JobBoard
    keys: KeyStore
    default_kb: str


def server_of(request: Request) -> Server:
    """The server state of the app that received ``request``."""
    server: Server = request.app.state.server
    return server


def error_response(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An OpenAI-style error answer."""
    return JSONResponse(error_json(message, kind, code), status_code=status, headers=headers)


def kb_error_response(exc: KBError) -> JSONResponse:
    """A kb-assistant error as its 4xx/5xx answer, with its own message."""
    for cls, status, kind, code in _STATUS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ModelBusy) else None
            return error_response(status, str(exc), kind, code, headers)
    return error_response(400, str(exc), "invalid_request_error", type(exc).__name__)


def create_app(
    assistant: Assistant,
    settings: Settings | None = None,
    *,
    keys: KeyStore | None = None,
    queue: ModelQueue | None = None,
    default_kb: str | None = None,
    host: str | None = None,
) -> FastAPI:
    """The API over ``assistant``.

    Args:
        assistant: the core it serves.
        settings: default: the assistant's.
        keys: the API keys (default: ``<home>/api_keys.json``); with none stored, requests
            need no key (``kb serve`` listens on loopback only then).
        queue: the model queue (default: ``serve_queue`` places).
        default_kb: the knowledge base the model ``kb`` answers from (default: the ``kb``
            setting).
        host: the address it listens on (default: the ``serve_host`` setting). Beyond
            loopback every request needs a key, even once the last one is revoked; on loopback
            only requests addressed to a loopback name are answered.
    """
    from kb_assistant.api.native import router as native_router
    from kb_assistant.api.openai import router as openai_router

    settings = settings or assistant.settings
    keys = keys or KeyStore(settings.home / KEYS_FILE)
    app = FastAPIOffline(
        title="kb-assistant",
        description="Answers from your own documents: an OpenAI-compatible API (/v1) and the "
        "knowledge-base operations of the 'kb' command.",
    )
    app.state.server = Server(
        assistant, settings, queue or ModelQueue(settings.serve_queue), JobBoard(assistant),
        keys, default_kb or settings.kb,
    )  # fmt: skip
    # Declared so that /docs offers an "Authorize" button; RequireKey does the checking.
    bearer = [Depends(HTTPBearer(auto_error=False, description="An API key of 'kb serve'."))]
    app.include_router(openai_router, dependencies=bearer)
    app.include_router(native_router, dependencies=bearer)
    _handle_errors(app)
    # Added innermost first: CORS answers preflights before the key check sees them.
    app.add_middleware(LimitBody, upload_limit=settings.max_upload_mb << 20)
    loopback = is_loopback(host or settings.serve_host)
    app.add_middleware(RequireKey, keys=keys, required=not loopback)
    origins = [o.strip() for o in settings.serve_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"])  # fmt: skip
    # Outermost: a foreign Host or Origin is refused before anything else looks at it.
    app.add_middleware(CheckOrigin, loopback=loopback, origins=origins)

    @app.get("/health", tags=["server"])
    def health(request: Request) -> dict[str, Any]:
        """Liveness and the model queue (no key needed)."""
        server = server_of(request)
        queue = server.queue
        return {"status": "ok", "queue": {"running": queue.running, "waiting": queue.waiting,
                                          "capacity": queue.capacity}}  # fmt: skip

    return app


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(KBError)
    async def kb_error(request: Request, exc: KBError) -> JSONResponse:
        return kb_error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return error_response(exc.status_code, str(exc.detail), kind,
                              code.get(exc.status_code), dict(exc.headers or {}))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return error_response(422, f"invalid request: {problems}", "invalid_request_error",
                              "invalid_request")  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server's log "
                              "has the details", "server_error", "internal_error")  # fmt: skip
