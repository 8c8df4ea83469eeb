"""The OpenAI-compatible routes (``/v1``): any OpenAI client can use a knowledge base.

``model: "kb/<name>"`` answers the conversation's last user message from that knowledge base
with the RAG chain (earlier user/assistant turns as its history); the text keeps its ``[n]``
markers and the response carries a top-level ``citations`` list. ``model: "kb"`` is the
server's default knowledge base. The chat model's own name talks to the model without
retrieval. Streams are server-sent events in OpenAI's chunk format, ending ``data: [DONE]``.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from kb_assistant.api.app import Server, error_response, kb_error_response, server_of
from kb_assistant.api.security import error_json
from kb_assistant.api.streaming import ClientGone, ModelCall, ModelStream, OnToken
from kb_assistant.chains import Answer, Turn
from kb_assistant.errors import KBError, ModelError
from kb_assistant.models.embeddings import Embedder
from kb_assistant.models.protocol import Generation

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
KB_PREFIX = "kb/"
MAX_INPUTS = 2048


class ChatMessage(BaseModel):
    """One message; content as text or as OpenAI's list of parts (text parts are read)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """A chat completion request. Sampling fields (temperature, max_tokens...) are accepted
    and left to the server's settings."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="'kb/<knowledge base>', 'kb', or the chat model's name.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


class EmbeddingRequest(BaseModel):
    """An embeddings request."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The embedding model's id, or 'kb/<name>' for its model.")
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


@dataclass(frozen=True)
class Target:
    """What a chat request's model names: a knowledge base, or the bare chat model."""

    kb: str | None  # None: the chat model without retrieval


def _not_found(model: str, hint: str) -> Response:
    return error_response(404, f"the model '{model}' does not exist; {hint}",
                          "invalid_request_error", "model_not_found")  # fmt: skip


def _chat_name(server: Server) -> str | None:
    """The chat model's name; None when it cannot be built (its requests then get 404)."""
    try:
        return server.assistant.chat_model.model_name
    except ModelError:
        return None


def _chat_names(server: Server) -> set[str]:
    name = _chat_name(server)
    return {server.settings.chat_model, name} if name else set()


def _target(server: Server, model: str) -> Target | None:
    if model == "kb":
        model = KB_PREFIX + server.default_kb
    if model.startswith(KB_PREFIX):
        name = model[len(KB_PREFIX) :]
        return Target(name) if name and server.assistant.library.exists(name) else None
    return Target(None) if model in _chat_names(server) else None


# --- chat ---------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> Response | dict[str, Any]:
    """Answer a conversation (streamed with ``stream: true``); see the module docstring."""
    server = server_of(request)
    target = await run_in_threadpool(_target, server, body.model)
    if target is None:
        return _not_found(body.model, "GET /v1/models lists them")
    work = _rag_work(server, target.kb, body.messages) if target.kb else _chat_work(
        server, body.messages)  # fmt: skip
    call: ModelCall[Any] = ModelCall(server.queue, request)
    try:
        await call.begin(work)
    except ClientGone:
        return Response(status_code=499)
    reply = _Reply(body.model)
    if body.stream:
        return ModelStream(_events(call, reply), call)
    try:
        result = await call.result()
    except ClientGone:
        return Response(status_code=499)
    return reply.completion(result)


def _question_and_history(messages: list[ChatMessage]) -> tuple[str, list[Turn]]:
    """The last user message, and the user/assistant pairs before it."""
    if messages[-1].role != "user" or not messages[-1].text.strip():
        raise KBError("the last message must be the user's question, and not empty")
    history: list[Turn] = []
    talk = [m for m in messages[:-1] if m.role in ("user", "assistant")]
    for asked, answered in itertools.pairwise(talk):
        if asked.role == "user" and answered.role == "assistant":
            history.append(Turn(asked.text, answered.text))
    return messages[-1].text.strip(), history


def _rag_work(server: Server, kb: str, messages: list[ChatMessage]) -> Callable[[OnToken], Any]:
    question, history = _question_and_history(messages)

    def work(on_token: OnToken) -> Answer:
        chain = server.assistant.rag_chain(kb)
        return chain.answer(question, history, on_token=on_token)

    return work


def _lc_messages(messages: list[ChatMessage]) -> list[BaseMessage]:
    kinds: dict[str, type[BaseMessage]] = {
        "system": SystemMessage, "developer": SystemMessage, "assistant": AIMessage,
    }  # fmt: skip
    return [kinds.get(m.role, HumanMessage)(m.text) for m in messages]


def _chat_work(server: Server, messages: list[ChatMessage]) -> Callable[[OnToken], Any]:
    if not messages[-1].text.strip():
        raise KBError("the last message is empty")
    prompt = _lc_messages(messages)

    def work(on_token: OnToken) -> tuple[str, Generation]:
        stats = Generation()
        pieces: list[str] = []
        stream = cast(Generator[str, None, None],
                      server.assistant.chat_model.stream_text(prompt, stats=stats))  # fmt: skip
        try:  # closed at once when the client goes: the worker stops generating
            for piece in stream:
                on_token(piece)
                pieces.append(piece)
        finally:
            stream.close()
        return "".join(pieces), stats

    return work


class _Reply:
    """The parts of OpenAI's answer shape for one request."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        data = {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return _event(data)

    def completion(self, result: Answer | tuple[str, Generation]) -> dict[str, Any]:
        text, extra = _text_and_extra(result)
        return {
            **self._head("chat.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": extra.pop("finish_reason")}],
            **extra,
        }  # fmt: skip

    def last(self, result: Answer | tuple[str, Generation]) -> str:
        _, extra = _text_and_extra(result)
        finish = extra.pop("finish_reason")
        choice = {"index": 0, "delta": {}, "finish_reason": finish}
        data = {**self._head("chat.completion.chunk"), "choices": [choice], **extra}
        return _event(data)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _finish(stop_reason: str | None) -> str:
    return "length" if stop_reason == "length" else "stop"


def citations_of(answer: Answer) -> list[dict[str, Any]]:
    """The answer's citations (``Answer.to_json()``'s) with each passage's chunk id."""
    ids = {p["n"]: p["chunk_id"] for p in answer.trace.get("in_prompt", [])}
    return [{**c, "chunk_id": ids.get(c["n"])} for c in answer.to_json()["citations"]]


def _text_and_extra(result: Answer | tuple[str, Generation]) -> tuple[str, dict[str, Any]]:
    if isinstance(result, Answer):
        trace = result.trace
        usage = _usage(trace.get("prompt_tokens") or 0, trace.get("completion_tokens") or 0)
        return result.answer, {
            "finish_reason": _finish(trace.get("stop_reason")), "usage": usage,
            "citations": citations_of(result), "refused": result.refused,
        }  # fmt: skip
    text, stats = result
    usage = _usage(stats.prompt_tokens, stats.completion_tokens)
    return text, {"finish_reason": _finish(stats.stop_reason), "usage": usage}


async def _events(call: ModelCall[Any], reply: _Reply) -> AsyncIterator[str]:
    """The stream: a role chunk, one chunk per piece of text, the last chunk (finish reason,
    usage, citations), ``[DONE]``. An error after the start arrives as an error event, then
    ``[DONE]``: a client always sees the stream end, never a cut connection."""
    yield reply.chunk({"role": "assistant", "content": ""})
    try:
        async for piece in call.tokens():
            yield reply.chunk({"content": piece})
        last = reply.last(call.outcome())
    except ClientGone:
        return
    except KBError as exc:
        yield _event(json.loads(bytes(kb_error_response(exc).body)))
    except Exception as exc:  # a bug: the log gets the details, the client a clean end
        logger.error("streamed answer for %s failed", reply.model, exc_info=exc)
        yield _event(error_json(f"internal error: {type(exc).__name__}", "server_error",
                                "internal_error"))  # fmt: skip
    else:
        yield last
    yield "data: [DONE]\n\n"


# --- models and embeddings ----------------------------------------------------------------


def _created(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0


@router.get("/models")
def models(request: Request) -> dict[str, Any]:
    """``kb/<name>`` for each knowledge base, and the chat model."""
    server = server_of(request)
    data = [
        {"id": KB_PREFIX + s.name, "object": "model", "created": _created(s.created_at),
         "owned_by": "kb-assistant"}
        for s in server.assistant.list_kbs()
    ]  # fmt: skip
    name = _chat_name(server)
    if name is not None:
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "kb-assistant"})
    return {"object": "list", "data": data}


def _embedder(server: Server, model: str) -> Embedder | None:
    assistant = server.assistant
    if model.startswith(KB_PREFIX):
        name = model[len(KB_PREFIX) :]
        if not name or not assistant.library.exists(name):
            return None
        return assistant.embedder_for(assistant.knowledge_base(name))
    default = assistant.embedder
    return default if model in (default.model_id, server.settings.embedding_model) else None


def _texts(value: str | list[str]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts or len(texts) > MAX_INPUTS:
        raise KBError(f"'input' must hold 1 to {MAX_INPUTS} texts (got {len(texts)})")
    if any(not t.strip() for t in texts):
        raise KBError("'input' holds an empty text; every text must have some content")
    return texts


def _encoded(vectors: Iterable[np.ndarray], encoding: str) -> list[Any]:
    if encoding == "base64":  # what the openai package asks for by default
        return [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    return [v.astype(float).tolist() for v in vectors]


@router.post("/embeddings", response_model=None)
def embeddings(body: EmbeddingRequest, request: Request) -> Response | dict[str, Any]:
    """Vectors from the knowledge bases' embedding model (unit length)."""
    server = server_of(request)
    embedder = _embedder(server, body.model)
    if embedder is None:
        return _not_found(body.model, f"embeddings come from '{server.assistant.embedder.model_id}'"
                          " or 'kb/<knowledge base>'")  # fmt: skip
    texts = _texts(body.input)
    vectors = embedder.embed_array(texts)
    tokens = sum(embedder.token_counter.count(texts))
    data = [{"object": "embedding", "index": i, "embedding": e}
            for i, e in enumerate(_encoded(vectors, body.encoding_format))]  # fmt: skip
    return {"object": "list", "data": data, "model": embedder.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
