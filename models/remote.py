"""A chat model served by an OpenAI-compatible server: ``chat_model = "openai:URL#model"``.

llama.cpp's ``llama-server``, llama-cpp-python's ``python -m llama_cpp.server``, vLLM and Ollama
all speak the OpenAI chat API. ``RemoteChatModel`` implements the chat-model protocol over it
(``models.remote_server`` does the HTTP), so the chains, the agent and the faces never learn
that the model is elsewhere. The key (setting ``chat_api_key``, ``KB_CHAT_API_KEY``) goes out
as ``Authorization: Bearer``.

- The context window is the server's when it tells (llama.cpp, vLLM), else the
  ``context_size`` setting: set it to the server's ``n_ctx`` for llama-cpp-python's server and
  Ollama (``num_ctx``; Ollama cuts a longer prompt silently, the others refuse it, and the RAG
  chain then retries with fewer passages).
- Tokens are counted by the server's tokenizer when it has one, else estimated generously
  (``remote_server.estimate_tokens``); a prompt adds ``MESSAGE_OVERHEAD`` per message.
- ``capabilities`` are what the server proves on first use, by a probe each: a reply held to a
  JSON schema (``fill_form``), parsed tool calls (native tools). A server that proves neither
  still answers questions; the agent then follows its fixed plan.
- Sampling comes from the settings; ``top_k`` and ``repeat_penalty`` go as extra fields that
  servers may ignore (dropped for good if one refuses them).
- The server queues concurrent requests itself: no client-side lock, and ``on_wait`` is never
  called. Closing a reply's stream early closes its HTTP response; the server sees the client
  leave and stops generating.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from kb_assistant.errors import ModelError
from kb_assistant.models.chat import parse_tool_calls
from kb_assistant.models.protocol import Capabilities, ChatModel, Generation, Sampling
from kb_assistant.models.remote_server import (
    RemoteServer,
    RequestRefused,
    reply_message,
    response_format,
)

if TYPE_CHECKING:
    from kb_assistant.settings import Settings

MESSAGE_OVERHEAD = 8  # template tokens around one message (ChatML 5, Llama 3 6): generous
REPLY_OVERHEAD = 8  # BOS and the assistant's header
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class RemoteChatModel(ChatModel):
    """A chat model behind an OpenAI-compatible server (see the module docstring).

    ``stream(messages, stats=Generation())`` fills ``stats`` from the server's ``usage`` when it
    sends one (else the prompt is counted here and each streamed piece is one token), with the
    time to the first piece and the finish reason (``cancelled`` when the caller stopped).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    server: RemoteServer
    sampling: Sampling = Field(default_factory=Sampling)
    fallback_context: int = 4096  # the context_size setting, for servers that do not tell
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def capabilities(self) -> Capabilities:
        """What the server proved it does (each probed once, on first use)."""
        return Capabilities(
            native_tools=self.server.native_tools(), fill_form=self.server.form_kind() is not None
        )

    @property
    def context_window(self) -> int:
        """As the server says, else the ``context_size`` setting."""
        return self.server.context(self.fallback_context)

    @property
    def parameter_count(self) -> float | None:
        """As llama.cpp's model list says (``meta.n_params``); other servers do not."""
        return self.server.facts().parameters

    @property
    def model_name(self) -> str:
        """``openai:<model>@host:port`` (a GGUF path shortened to its file name)."""
        model = self.server.facts().model
        if model.endswith(".gguf"):
            model = re.split(r"[\\/]", model)[-1]
        return f"openai:{model}@{self.server.endpoint.host}"

    def close(self) -> None:
        """Close the connections (the next call opens new ones)."""
        self.server.close()

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RemoteChatModel:
        """This model with ``tools`` sent on every call (sharing the server's connections)."""
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.model_copy(update={
            "bound_tools": [convert_to_openai_tool(t) for t in tools],
            "tool_choice": kwargs.get("tool_choice"),
        })  # fmt: skip

    def _body(self, messages: Sequence[dict[str, Any]], stop: list[str] | None) -> dict[str, Any]:
        sampling = {k: v for k, v in asdict(self.sampling).items() if v is not None}
        return {"messages": list(messages), **sampling, **({"stop": stop} if stop else {})}

    def fill_form(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int = 256
    ) -> str:
        """JSON held to ``schema`` by the server's ``response_format``, greedy."""
        kind = self.server.form_kind()
        if kind is None:
            raise ModelError(
                f"the chat server at {self.server.endpoint.host} does not hold replies to a "
                "JSON schema (response_format), which this step needs; use a local model, or a "
                "server that does (llama.cpp's llama-server, vLLM, Ollama)"
            )
        body = {**self._body(messages, None), "max_tokens": max_tokens, "temperature": 0.0,
                "response_format": response_format(kind, schema)}  # fmt: skip
        return str(reply_message(self.server.complete(body)).get("content") or "")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self.bound_tools:
            text = "".join(str(c.message.content) for c in self._stream(messages, stop, **kwargs))
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
        choice = _tool_choice(self.tool_choice)
        body = {**self._body(openai_messages(messages), stop), "tools": self.bound_tools,
                "tool_choice": choice}  # fmt: skip
        stats: Generation = kwargs.get("stats") or Generation()
        started = time.perf_counter()
        try:
            reply = self.server.complete(body)
        except RequestRefused:
            if choice != "required":
                raise
            # Servers that take tools but not "required" (llama-cpp-python's, older vLLM):
            # the model is asked to call freely; the agent's bounds handle a reply in prose.
            reply = self.server.complete({**body, "tool_choice": "auto"})
        stats.seconds = time.perf_counter() - started
        usage = reply["usage"] if isinstance(reply.get("usage"), dict) else {}
        stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        stats.completion_tokens = int(usage.get("completion_tokens") or 0)
        stats.stop_reason = reply["choices"][0].get("finish_reason")
        message = tool_call_message(reply_message(reply))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stats: Generation = kwargs.get("stats") or Generation()
        started = time.perf_counter()
        usage: dict[str, Any] = {}
        events = self.server.stream(self._body(openai_messages(messages), stop))
        try:
            for event in events:
                usage = event["usage"] if isinstance(event.get("usage"), dict) else usage
                for choice in event.get("choices") or []:
                    stats.stop_reason = choice.get("finish_reason") or stats.stop_reason
                    piece = (choice.get("delta") or {}).get("content")
                    if not piece:
                        continue
                    if stats.time_to_first_token is None:
                        stats.time_to_first_token = time.perf_counter() - started
                    stats.completion_tokens += 1
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager is not None:
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
        except GeneratorExit:
            events.close()  # closes the HTTP response: the server stops generating
            stats.stop_reason = "cancelled"
            self._settle(stats, usage, messages, started)
            raise
        # [DONE] without a finish reason: the server cut the reply (llama-cpp-python's does
        # when another request arrives, unless started with --interrupt_requests False).
        stats.stop_reason = stats.stop_reason or "interrupted"
        self._settle(stats, usage, messages, started)

    def _settle(
        self, stats: Generation, usage: dict[str, Any], messages: list[BaseMessage], started: float
    ) -> None:
        """The totals: the server's usage when it sent one, else counted here."""
        stats.seconds = time.perf_counter() - started
        if isinstance(usage.get("completion_tokens"), int):
            stats.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            stats.prompt_tokens = usage["prompt_tokens"]
        else:
            with contextlib.suppress(ModelError):  # a count lost is no reason to lose the reply
                stats.prompt_tokens = self.get_num_tokens_from_messages(messages)

    def get_num_tokens(self, text: str) -> int:
        """Tokens of raw text: the server's tokenizer, else a generous estimate."""
        return self.server.count(text) if text else 0

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of every message, ``MESSAGE_OVERHEAD`` each for the chat template, and the
        reply's header; tool schemas and calls counted as their JSON."""
        total = REPLY_OVERHEAD
        for m in openai_messages(messages):
            total += self.get_num_tokens(m["content"]) + MESSAGE_OVERHEAD
            if m.get("tool_calls"):
                total += self.get_num_tokens(json.dumps(m["tool_calls"], ensure_ascii=False))
        if tools:
            from langchain_core.utils.function_calling import convert_to_openai_tool

            schemas = [convert_to_openai_tool(t) for t in tools]
            total += self.get_num_tokens(json.dumps(schemas, ensure_ascii=False))
        return total


def openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat messages (tool calls and their results included)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": str(m.content)})
        elif isinstance(m, AIMessage) and m.tool_calls:
            calls = [{"id": c["id"], "type": "function", "function": {
                "name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                for c in m.tool_calls]  # fmt: skip
            out.append({"role": "assistant", "content": str(m.content), "tool_calls": calls})
        else:
            out.append({"role": _ROLES.get(m.type, "user"), "content": str(m.content)})
    return out


def tool_call_message(message: dict[str, Any]) -> AIMessage:
    """A reply's message as an AIMessage: the server's parsed ``tool_calls``, else any
    ``<tool_call>`` blocks in its text (a server that left the model's calls unparsed)."""
    content = str(message.get("content") or "")
    calls = []
    for call in message.get("tool_calls") or []:
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = {}
        if isinstance(function.get("name"), str) and isinstance(args, dict):
            calls.append({"name": function["name"], "args": args, "id": str(call.get("id"))})
    return AIMessage(content=content, tool_calls=calls) if calls else parse_tool_calls(content)


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any]:
    """LangChain's ``tool_choice`` in OpenAI's terms (``any`` is ``required``; a tool's name
    forces that tool)."""
    if choice is None or choice == "auto":
        return "auto"
    if choice in ("any", "required", "none"):
        return "required" if choice == "any" else choice
    if isinstance(choice, str):
        return {"type": "function", "function": {"name": choice}}
    return choice


def remote_report(settings: Settings, model: RemoteChatModel, *, check: bool) -> dict[str, Any]:
    """What ``kb doctor`` reports for a chat model on a server: where, which model, its
    context window and where it came from, how tokens are counted, what it proved it can do,
    and (``check``) a one-token generation."""
    server = model.server
    facts = server.facts()
    report: dict[str, Any] = {
        "chat_model": settings.chat_model, "server": server.endpoint.base_url,
        "model_name": model.model_name, "served_model": facts.model,
        "context_size": model.context_window,
        "context_size_from": "the server" if facts.context else "the context_size setting",
        "parameters": facts.parameters,
        "token_counts": server.tokenizer_url() or "estimated (the server has no tokenizer)",
        "api_key": "set" if settings.chat_api_key else "not set",
    }  # fmt: skip
    if check:
        capabilities = model.capabilities
        report["fills_forms"] = capabilities.fill_form
        report["native_tools"] = capabilities.native_tools
        report["generation_check"] = _one_token(model)
    return report


def _one_token(model: RemoteChatModel) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    one = model.model_copy(update={"sampling": Sampling(max_tokens=1)})
    stats = Generation()
    started = time.perf_counter()
    try:
        text = "".join(one.stream_text([HumanMessage("Hi")], stats=stats))
    except ModelError as exc:
        return {"ok": False, "error": str(exc)}
    seconds = round(time.perf_counter() - started, 3)
    return {"ok": True, "seconds": seconds, "token": text, "server": model.server.endpoint.host}
