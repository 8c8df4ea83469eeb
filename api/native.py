"""The native routes: what the ``kb`` command does, over HTTP.

Knowledge bases (``kb kbs``, ``kb kb create|delete``), documents (uploads ingested as
background jobs, ``kb docs``, ``kb remove``), ``kb search``, ``kb ask`` and ``kb agent``; the
JSON is what the command's ``--json`` prints. ``kb eval`` is not here: it reads question files
from the server's disk and writes report folders with plots, a batch job for the command line
rather than a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from kb_assistant.api.app import Server, error_response, server_of
from kb_assistant.api.streaming import ClientGone, ModelCall, OnToken
from kb_assistant.assistant import MAX_K
from kb_assistant.errors import KBError, UploadRejected
from kb_assistant.vectorstore import SearchHit, validate_name
from kb_assistant.vectorstore.conversations import ID_LENGTH, ID_PATTERN

router = APIRouter()


class NewKnowledgeBase(BaseModel):
    """``POST /kbs``."""

    name: str = Field(description="Letters, digits, '-' and '_' (a folder name).")


class SearchRequest(BaseModel):
    """``POST /kbs/{kb}/search``."""

    query: str
    k: int = Field(default=5, ge=1, le=MAX_K)


class Question(BaseModel):
    """``POST /kbs/{kb}/ask`` and ``/agent``."""

    question: str
    conversation: str | None = Field(
        default=None, description="ask only: a saved conversation's id, to ask a follow-up."
    )


# --- knowledge bases ----------------------------------------------------------------------


@router.get("/kbs", tags=["knowledge bases"])
def list_kbs(request: Request) -> list[dict[str, Any]]:
    """Every knowledge base with its size and embedding model (``kb kbs --json``)."""
    return [
        {"name": s.name, "documents": s.documents, "chunks": s.chunks,
         "embedding_model": s.embedding_model, "created_at": s.created_at}
        for s in server_of(request).assistant.list_kbs()
    ]  # fmt: skip


@router.post("/kbs", tags=["knowledge bases"], status_code=201)
def create_kb(body: NewKnowledgeBase, request: Request) -> dict[str, Any]:
    """Create an empty knowledge base (409 if the name is taken)."""
    kb = server_of(request).assistant.create_kb(body.name)
    return {"name": kb.name, "embedding_model": kb.manifest.embedding_model}


@router.delete("/kbs/{kb}", tags=["knowledge bases"])
def delete_kb(kb: str, request: Request) -> dict[str, Any]:
    """Delete a knowledge base and everything in it."""
    server_of(request).assistant.delete_kb(kb)
    return {"deleted": kb}


# --- documents ----------------------------------------------------------------------------


@router.post("/kbs/{kb}/documents", tags=["documents"], status_code=202)
async def upload(
    kb: str, request: Request, files: Annotated[list[UploadFile], File(description="Files.")]
) -> dict[str, Any]:
    """Store the uploaded files and ingest them in the background (the knowledge base is
    created if needed); ``GET /jobs/{job}`` follows it."""
    server = server_of(request)
    validate_name(kb)
    stored: dict[Path, str] = {}
    for item in files:
        name = item.filename or "upload"
        data = await item.read()
        if not data:
            raise UploadRejected(f"'{name}' is empty")
        path = await run_in_threadpool(server.assistant.save_upload, name, data, kb=kb)
        stored[path] = name
    return {"job": server.jobs.start(kb, stored).job_id}


@router.get("/jobs/{job_id}", tags=["documents"], response_model=None)
def job(job_id: str, request: Request) -> Response | dict[str, Any]:
    """An ingest job: state, progress, and the report (or the error) when it has ended."""
    found = server_of(request).jobs.get(job_id)
    if found is None:
        return error_response(404, f"no job '{job_id}' (finished jobs are kept for a while)",
                              "invalid_request_error", "job_not_found")  # fmt: skip
    return found.to_json()


@router.get("/kbs/{kb}/documents", tags=["documents"])
def documents(kb: str, request: Request) -> list[dict[str, Any]]:
    """The documents of a knowledge base (``kb docs --json``)."""
    return [
        {"doc_id": d.doc_id, "source": d.source, "name": d.name, "format": d.format,
         "pages": d.pages, "chunks": d.chunks, "sha256": d.sha256, "size": d.size,
         "added_at": d.added_at, "notes": d.notes}
        for d in server_of(request).assistant.documents(kb)
    ]  # fmt: skip


@router.delete("/kbs/{kb}/documents/{ref}", tags=["documents"])
def remove(kb: str, ref: str, request: Request) -> list[dict[str, Any]]:
    """Remove a document (by id, source path or name) with its chunks and vectors."""
    removed = server_of(request).assistant.remove([ref], kb=kb)
    return [{"doc_id": d.doc_id, "source": d.source, "chunks": d.chunks} for d in removed]


# --- answers ------------------------------------------------------------------------------


def _hit(h: SearchHit) -> dict[str, Any]:
    c = h.chunk
    return {
        "rank": h.rank, "text": c.text, "source": c.source, "name": c.name, "page": c.page,
        "score": round(h.score, 4), "dense_score": _rounded(h.dense_score),
        "keyword_score": _rounded(h.keyword_score), "heading": c.heading, "sheet": c.sheet,
        "doc_id": c.doc_id, "chunk_id": c.chunk_id, "graph": list(h.graph),
    }  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@router.post("/kbs/{kb}/search", tags=["answers"])
def search(kb: str, body: SearchRequest, request: Request) -> list[dict[str, Any]]:
    """The chunks closest to the query (``kb search --json``); no chat model involved."""
    return [_hit(h) for h in server_of(request).assistant.search(body.query, k=body.k, kb=kb)]


@router.post("/kbs/{kb}/conversations", tags=["answers"], status_code=201)
def new_conversation(kb: str, request: Request) -> dict[str, Any]:
    """Start a saved conversation (as ``kb chat`` does); pass its id to ``ask`` for
    follow-ups."""
    return {"conversation": server_of(request).assistant.new_conversation(kb)}


async def _through_queue(server: Server, request: Request, work: Any) -> Any:
    call: ModelCall[Any] = ModelCall(server.queue, request)
    await call.begin(work)
    return await call.result()


def _check_conversation(server: Server, kb: str, conversation: str) -> None:
    """The conversation exists, by its exact id, and belongs to ``kb``.

    Raises:
        KBError: not an id, or another knowledge base's conversation.
        SessionNotFound: no conversation has that id.
    """
    if not ID_PATTERN.match(conversation):
        raise KBError(
            f"'{conversation}' is not a conversation id: ids are {ID_LENGTH} hexadecimal "
            f"characters, as POST /kbs/{kb}/conversations returns them"
        )
    info = server.assistant.conversations.get(conversation, prefix=False)
    if info.kb != kb:
        raise KBError(
            f"conversation '{conversation}' belongs to knowledge base '{info.kb}', not '{kb}'; "
            f"ask it at /kbs/{info.kb}/ask or start one here with POST /kbs/{kb}/conversations"
        )


@router.post("/kbs/{kb}/ask", tags=["answers"], response_model=None)
async def ask(kb: str, body: Question, request: Request) -> Response | dict[str, Any]:
    """An answer with citations, trace and sentence checks (``kb ask --json``)."""
    server = server_of(request)
    await run_in_threadpool(server.assistant.knowledge_base, kb)  # 404 before queueing
    if body.conversation is not None:
        await run_in_threadpool(_check_conversation, server, kb, body.conversation)

    def work(on_token: OnToken) -> dict[str, Any]:
        answer = server.assistant.ask(body.question, kb=kb, conversation=body.conversation,
                                      on_token=on_token)  # fmt: skip
        return answer.to_json()

    try:
        result: dict[str, Any] = await _through_queue(server, request, work)
    except ClientGone:
        return Response(status_code=499)
    return result


@router.post("/kbs/{kb}/agent", tags=["answers"], response_model=None)
async def agent(kb: str, body: Question, request: Request) -> Response | dict[str, Any]:
    """An answer from the agent, with its steps, SQL and rows (``kb agent --json``)."""
    server = server_of(request)
    await run_in_threadpool(server.assistant.knowledge_base, kb)

    def work(on_token: OnToken) -> dict[str, Any]:
        # on_token("") shows nothing but raises Cancelled once the client has gone: the agent
        # stops before its next step (run_agent lets the exception through) and frees the model
        return server.assistant.agent(body.question, kb=kb,
                                      on_step=lambda _step: on_token("")).to_json()  # fmt: skip

    try:
        result: dict[str, Any] = await _through_queue(server, request, work)
    except ClientGone:
        return Response(status_code=499)
    return result
