"""The HTTP side of a remote chat model (``models.remote``): an OpenAI-compatible server.

One httpx client per server; what the chat API does not say is asked once and kept:

- the model: the setting's ``#name``, else the first one ``GET /v1/models`` lists;
- the context window: llama.cpp's ``GET /props`` (``default_generation_settings.n_ctx``) or
  vLLM's ``max_model_len`` in the model list; llama-cpp-python's server and Ollama do not tell
  (the caller falls back to the ``context_size`` setting). A refusal naming "N tokens" teaches
  the window, and raises ``ContextOverflow``;
- tokens: the server's tokenizer (``POST /tokenize`` at the root of llama.cpp and vLLM,
  ``POST /extras/tokenize/count`` of llama-cpp-python's server), else ``estimate_tokens``;
- forms: the ``response_format`` kind the server enforces (OpenAI's ``json_schema``, or
  llama-cpp-python's ``json_object`` with a ``schema``), proved by a probe: asked to say hello
  under a schema, the reply is ``{"ok": ...}``;
- native tools: proved by a probe offering one tool: the reply holds parsed ``tool_calls``
  (llama.cpp needs ``--jinja``, vLLM ``--enable-auto-tool-choice``).

Every failure is a ``ModelError`` naming the URL and the fix, never an httpx traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from kb_assistant.errors import ContextOverflow, ModelError
from kb_assistant.models.llm import REMOTE_PREFIX

TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # a queued request waits its turn; a dead host not
FORM = "chat_model = 'openai:http://HOST:PORT/v1#MODEL'"
_EXTRAS = ("top_k", "repeat_penalty", "repetition_penalty", "stream_options")  # beyond OpenAI's
_FORM_KINDS = ("json_schema", "json_object")
_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                 "additionalProperties": False}  # fmt: skip
_PROBE_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time.",
               "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
_OVERFLOW = re.compile(
    r"context (length|size|window)|exceed_context_size|context_length_exce", re.I
)
_WINDOW = re.compile(r"(?:maximum context length is|context window of)\s*(\d+)", re.I)
_PIECES = re.compile(
    r"(?P<cjk>[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef])|(?P<word>[A-Za-z]+)"
    r"|(?P<space>\s*\n\s*|\s{2,})|(?P<one>[^\sA-Za-z])"
)
Tokenizer = tuple[str, Callable[[str], dict[str, Any]]]  # URL, body for a text


@dataclass(frozen=True)
class RemoteEndpoint:
    """Where a chat model is served: the API's base URL and, when named, the model."""

    base_url: str  # http://host:port/v1, without a trailing slash
    model: str | None = None

    @property
    def root(self) -> str:
        """The server's root, where llama.cpp and vLLM keep ``/tokenize`` and ``/props``."""
        return self.base_url.removesuffix("/v1")

    @property
    def host(self) -> str:
        """``host:port``."""
        return urlsplit(self.base_url).netloc


def parse_remote(chat_model: str) -> RemoteEndpoint:
    """The endpoint of ``openai:http://host:port/v1#model`` (``#model`` may be left out).

    Raises:
        ModelError: the value is not of that form (no http/https scheme, no host, a bad port),
            as a chat model that is not found is a ``ModelError``.
    """
    url, _, model = chat_model.strip().removeprefix(REMOTE_PREFIX).strip().partition("#")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ModelError(
            f"chat_model '{chat_model}' is not a server address: an OpenAI-compatible server "
            "is given as 'openai:http://HOST:PORT/v1#MODEL' (scheme http:// or https://, a "
            "host and a port; '#MODEL' may be left out to use the server's first model)"
        )
    if parts.username or parts.password:
        raise ModelError(
            f"chat_model names a user and password in its address ({parts.hostname}); they "
            "would show wherever the model's name is shown: give the server's key as "
            "KB_CHAT_API_KEY (setting chat_api_key) instead"
        )
    return RemoteEndpoint(url.rstrip("/"), model.strip() or None)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` for a server without a tokenizer endpoint, deliberately generous so
    that a prompt budgeted with it fits: a run of Latin letters one token per four letters, a
    CJK character 1.5 (vocabularies trained on Chinese take 0.6-1; English-only ones 2-3, and
    then the server's overflow error is the safety net), every digit, punctuation mark or other
    character one, a line break or run of spaces one. English prose comes out 10-20% above
    SmolLM2's real count, code and numbers more."""
    total = 0.0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        total += (
            1.5 if kind == "cjk" else math.ceil(len(match.group()) / 4) if kind == "word" else 1
        )
    return math.ceil(total)


@dataclass(frozen=True)
class ServerFacts:
    """What the server told about itself (asked once)."""

    model: str
    context: int | None
    parameters: float | None
    flavour: str  # "llama.cpp" (/props answered), "vllm" (max_model_len listed) or "openai"


class RequestRefused(ModelError):
    """The server answered a request with an error status (a ``ModelError`` to callers that
    need not tell it from others)."""


class RemoteServer:
    """An OpenAI-compatible server: requests, what was found out about it (once, under a
    lock), and every failure as a ``ModelError`` that names the URL and the fix."""

    def __init__(
        self, endpoint: RemoteEndpoint, *, api_key: str | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self._api_key = api_key
        self._timeout = timeout
        self._lock = threading.RLock()
        self._client: httpx.Client | None = None
        self._facts: ServerFacts | None = None
        self._learned_context: int | None = None
        self._probed: dict[str, Any] = {}  # "tokenizer", "form", "tools" -> what was found
        self._extras_ok = True
        self._counts: dict[str, int] = {}

    # --- requests -----------------------------------------------------------------------

    def client(self) -> httpx.Client:
        """The HTTP client (made on first use, again after ``close``)."""
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> httpx.Client:
        key = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.Client(timeout=self._timeout, headers=key)

    def close(self) -> None:
        """Close the connections (the next request opens new ones)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def request(
        self, method: str, url: str, body: dict[str, Any] | None = None, *, optional: bool = False
    ) -> Any:
        """The JSON answer; ``optional``: None where the server has no such endpoint (an error
        status other than a refused key, or an answer that is not JSON)."""
        try:
            response = self.client().request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(url, exc) from None
        if response.status_code >= 400:
            if optional and response.status_code not in (401, 403):
                return None
            raise self._refused(url, response)
        reply = _json_or_none(response)
        if reply is None and not optional:
            raise ModelError(
                f"{url} answered with something that is not JSON: is {self.endpoint.base_url} "
                f"an OpenAI-compatible API? It usually ends in /v1 ({FORM})"
            )
        return reply

    def _unreachable(self, url: str, exc: httpx.HTTPError) -> ModelError:
        if isinstance(exc, httpx.ConnectError):
            return ModelError(
                f"cannot reach the chat server at {url} ({exc}): start it, or correct the "
                f"setting chat_model ({FORM})"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ModelError(
                f"the chat server at {url} did not answer in time ({type(exc).__name__}): it "
                "may be overloaded or stuck; check it, or the address in the setting chat_model"
            )
        return ModelError(f"the connection to the chat server at {url} broke ({exc}); see its log")

    def _refused(self, url: str, response: httpx.Response) -> ModelError:
        status, (message, error) = response.status_code, _error_of(response)
        if status in (401, 403):
            fix = (
                "the key in KB_CHAT_API_KEY (setting chat_api_key) was refused; give the "
                "server's key" if self._api_key
                else "the server needs a key: set KB_CHAT_API_KEY (setting chat_api_key)"
            )  # fmt: skip
            return RequestRefused(f"{url} answered HTTP {status} ({message}): {fix}")
        if _OVERFLOW.search(f"{message} {error.get('code', '')} {error.get('type', '')}"):
            return self._overflow(message, error)
        if status == 404:
            return RequestRefused(
                f"{url} answered HTTP 404 ({message}): is {self.endpoint.base_url} the server's "
                "OpenAI-compatible API (usually ending in /v1), and is the model served? "
                f"GET {self.endpoint.base_url}/models lists them ({FORM})"
            )
        if status >= 500:
            return RequestRefused(
                f"the chat server at {url} failed (HTTP {status}: {message}); see its log"
            )
        return RequestRefused(
            f"the chat server at {url} refused the request (HTTP {status}: {message})"
        )

    def _overflow(self, message: str, error: dict[str, Any]) -> ContextOverflow:
        """The prompt was too long; the window the refusal names is the window from now on."""
        found = _WINDOW.search(message)
        window = _positive_int(error.get("n_ctx")) or (int(found.group(1)) if found else None)
        if window is not None:
            self._learned_context = window
        size = f" of {window} tokens" if window else ""
        return ContextOverflow(
            f"the prompt does not fit the context window{size} of the chat server at "
            f"{self.endpoint.host} ({message}); set context_size to the server's context size"
        )

    # --- what the server is -------------------------------------------------------------

    def facts(self) -> ServerFacts:
        """The served model, its context window and size, as the server tells (asked once)."""
        with self._lock:
            if self._facts is None:
                self._facts = self._discover()
            return self._facts

    def _discover(self) -> ServerFacts:
        base = self.endpoint.base_url
        listing = self.request("GET", f"{base}/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise ModelError(
                f"GET {base}/models did not list models: is {base} an OpenAI-compatible API? "
                f"It usually ends in /v1 ({FORM})"
            )
        entries = {str(e["id"]): e for e in data if isinstance(e, dict) and "id" in e}
        model = self.endpoint.model or next(iter(entries), None)
        if model is None:
            raise ModelError(f"the chat server at {base} lists no models; name one: "
                             f"chat_model = 'openai:{base}#MODEL'")  # fmt: skip
        entry = entries.get(model, {})
        props = self.request("GET", f"{self.endpoint.root}/props", optional=True)
        slot = props.get("default_generation_settings") if isinstance(props, dict) else None
        served = _positive_int(slot.get("n_ctx")) if isinstance(slot, dict) else None
        listed = _positive_int(entry.get("max_model_len"))
        meta = entry.get("meta")
        size = _positive_int(meta.get("n_params")) if isinstance(meta, dict) else None
        flavour = "llama.cpp" if served else "vllm" if listed else "openai"
        return ServerFacts(model, served or listed, float(size) if size else None, flavour)

    def context(self, fallback: int) -> int:
        """The context window: as a refusal named it, as the server said, else ``fallback``."""
        return self._learned_context or self.facts().context or fallback

    # --- tokens -------------------------------------------------------------------------

    def count(self, text: str) -> int:
        """Tokens of ``text``: by the server's tokenizer when it has one, else estimated."""
        if (known := self._counts.get(text)) is not None:
            return known
        tokenizer: Tokenizer | None = self._probe("tokenizer", self._find_tokenizer)
        if tokenizer is None:
            return estimate_tokens(text)
        url, body = tokenizer
        count = _token_count(self.request("POST", url, body(text)))
        if count is None:
            raise ModelError(f"{url} stopped answering with tokens; see the server's log")
        if len(self._counts) >= 4096:
            self._counts.clear()
        self._counts[text] = count
        return count

    def tokenizer_url(self) -> str | None:
        """The tokenizer endpoint in use (probed once), None when counts are estimated."""
        tokenizer: Tokenizer | None = self._probe("tokenizer", self._find_tokenizer)
        return tokenizer[0] if tokenizer else None

    def _find_tokenizer(self) -> Tokenizer | None:
        """The tokenizer endpoint this kind of server has, if it answers."""
        facts, root = self.facts(), self.endpoint.root
        candidate: Tokenizer
        if facts.flavour == "llama.cpp":
            candidate = (f"{root}/tokenize", lambda t: {"content": t, "add_special": False})
        elif facts.flavour == "vllm":
            candidate = (f"{root}/tokenize", lambda t: {
                "model": facts.model, "prompt": t, "add_special_tokens": False})  # fmt: skip
        else:  # llama-cpp-python's server; Ollama and others have none
            candidate = (f"{root}/extras/tokenize/count", lambda t: {"input": t})
        reply = self.request("POST", candidate[0], candidate[1]("Hello"), optional=True)
        return candidate if _token_count(reply) is not None else None

    # --- chat ---------------------------------------------------------------------------

    def _prepared(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        facts = self.facts()
        body = {"model": facts.model, **body, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if facts.flavour == "vllm" and "repeat_penalty" in body:
            body["repetition_penalty"] = body.pop("repeat_penalty")
        return body if self._extras_ok else {k: v for k, v in body.items() if k not in _EXTRAS}

    def _takes_extras_back(self, response: httpx.Response, body: dict[str, Any]) -> bool:
        """Whether a refusal names a field beyond OpenAI's (then none is sent again)."""
        message = _error_of(response)[0]
        named = any(k in body and k in message for k in _EXTRAS)
        if response.status_code in (400, 422) and named:
            self._extras_ok = False
            return True
        return False

    def complete(self, body: dict[str, Any], client: httpx.Client | None = None) -> dict[str, Any]:
        """One whole chat completion (through ``client``, else the shared one)."""
        url = f"{self.endpoint.base_url}/chat/completions"
        for _ in range(2):
            prepared = self._prepared(body, stream=False)
            try:
                response = (client or self.client()).post(url, json=prepared)
            except httpx.HTTPError as exc:
                raise self._unreachable(url, exc) from None
            if response.status_code < 400:
                break
            if not self._takes_extras_back(response, prepared):
                raise self._refused(url, response)
        reply = _json_or_none(response)
        if (
            not isinstance(reply, dict)
            or not isinstance(reply.get("choices"), list)
            or not (reply["choices"] and isinstance(reply["choices"][0], dict))
        ):
            raise ModelError(f"{url} answered without choices: is it an OpenAI-compatible API?")
        return reply

    def stream(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """The events of one streamed chat completion (server-sent ``data:`` lines up to
        ``[DONE]``); closing the generator closes the response, and the server stops."""
        url = f"{self.endpoint.base_url}/chat/completions"
        for _ in range(2):
            prepared = self._prepared(body, stream=True)
            try:
                with self.client().stream("POST", url, json=prepared) as response:
                    if response.status_code >= 400:
                        response.read()
                        if self._takes_extras_back(response, prepared):
                            continue
                        raise self._refused(url, response)
                    finished = yield from _events(response, url)
            except httpx.HTTPError as exc:
                raise self._unreachable(url, exc) from None
            if not finished:
                raise self._cut_short(url, body)
            return

    def _cut_short(self, url: str, body: dict[str, Any]) -> ModelError:
        """Why a stream ended before its end: llama-cpp-python's server drops the connection
        on an error once it streams (a prompt too long); asked again for one token, whole,
        on a new connection (the pooled one is dead), it says what is wrong."""
        with self._new_client() as client:
            try:
                self.complete({**body, "max_tokens": 1}, client)
            except ModelError as exc:
                return exc
        return ModelError(f"the chat server at {url} ended the reply early; see its log")

    # --- capabilities -------------------------------------------------------------------

    def _probe(self, name: str, find: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._probed:
                self._probed[name] = find()
            return self._probed[name]

    def form_kind(self) -> str | None:
        """The ``response_format`` kind the server enforces (probed once), or None."""
        kind: str | None = self._probe("form", self._find_form_kind)
        return kind

    def _find_form_kind(self) -> str | None:
        for kind in _FORM_KINDS:
            body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 24,
                    "temperature": 0.0,
                    "response_format": response_format(kind, _PROBE_SCHEMA)}  # fmt: skip
            try:
                text = reply_message(self.complete(body)).get("content") or ""
            except RequestRefused:
                continue
            with contextlib.suppress(ValueError):
                data = json.loads(text)
                if isinstance(data, dict) and isinstance(data.get("ok"), bool):
                    return kind
        return None

    def native_tools(self) -> bool:
        """Whether the server parses the model's tool calls itself (probed once)."""
        return bool(self._probe("tools", self._find_native_tools))

    def _find_native_tools(self) -> bool:
        body = {"messages": [{"role": "user", "content": "What time is it? Call get_time."}],
                "tools": [_PROBE_TOOL], "tool_choice": "auto", "max_tokens": 48,
                "temperature": 0.0}  # fmt: skip
        try:
            calls = reply_message(self.complete(body)).get("tool_calls") or []
        except RequestRefused:
            return False
        return any(
            isinstance(c, dict) and (c.get("function") or {}).get("name") == "get_time"
            for c in calls
        )


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    """``response_format`` of one kind: OpenAI's ``json_schema``, or ``json_object`` with a
    ``schema`` (llama-cpp-python's server, which refuses the other)."""
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "form", "schema": schema}}
    return {"type": "json_object", "schema": schema}


def reply_message(reply: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message of a whole completion."""
    message = reply["choices"][0].get("message")
    return message if isinstance(message, dict) else {}


def _events(response: httpx.Response, url: str) -> Generator[dict[str, Any], None, bool]:
    """The JSON events of a server-sent stream; returns whether it reached its end (``[DONE]``,
    or a finish reason from a server that sends no ``[DONE]``)."""
    finished = False
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank lines, ": ping" comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        try:
            event = json.loads(data)
        except ValueError:
            raise ModelError(f"{url} streamed something that is not JSON: {data[:200]}") from None
        if not isinstance(event, dict):
            continue
        if "error" in event:
            error = event["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise ModelError(f"the chat server at {url} failed while answering ({text})")
        choices = event.get("choices") or []
        finished = finished or any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
        yield event
    return finished


def _error_of(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """An error answer's message and its JSON (``{"error": {...}}``, ``{"detail": ...}``)."""
    body = _json_or_none(response)
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return " ".join(str(error or response.text or "no details").split())[:300], {}
    message = error.get("message") or error.get("detail") or "no details given"
    return " ".join(str(message).split())[:300], error


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _token_count(reply: Any) -> int | None:
    """The count of a tokenizer's answer (``{"count": n}`` or ``{"tokens": [...]}``)."""
    if not isinstance(reply, dict):
        return None
    if isinstance(reply.get("count"), int):
        return int(reply["count"])
    return len(reply["tokens"]) if isinstance(reply.get("tokens"), list) else None
