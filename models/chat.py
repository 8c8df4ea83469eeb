"""The chat models (``models.protocol.ChatModel``): llama.cpp in its worker process, and a
scripted fake for tests.

Both count prompt tokens themselves: LangChain's default counter loads a GPT-2 tokenizer from
the internet, which would break offline use and count the wrong tokens anyway.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from kb_assistant.models.llm import LocalLLM
from kb_assistant.models.protocol import Capabilities, ChatModel, Generation, Sampling

if TYPE_CHECKING:
    pass

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
_WORDISH = re.compile(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]", re.UNICODE)


def as_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the role/content dicts chat templates take (tool calls written
    the Hermes way, ``<tool_call>{json}</tool_call>``; tool results as role ``tool``)."""
    out = []
    for m in messages:
        content = str(m.content)
        if isinstance(m, AIMessage) and m.tool_calls:
            content += "".join(
                f"<tool_call>{json.dumps({'name': c['name'], 'arguments': c['args']})}</tool_call>"
                for c in m.tool_calls
            )
        role = "tool" if isinstance(m, ToolMessage) else _ROLES.get(m.type, "user")
        out.append({"role": role, "content": content})
    return out


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> AIMessage:
    """A completion as an AIMessage: ``<tool_call>{"name", "arguments"}</tool_call>`` blocks
    (the Hermes/Qwen function-calling format) become tool calls; the rest is the content."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {}
        if isinstance(data.get("name"), str) and isinstance(args, dict):
            # ids unique across the conversation: results are matched to calls by id
            calls.append({"name": data["name"], "args": args, "id": f"call_{uuid4().hex[:12]}"})
    content = _TOOL_CALL.sub("", text).strip() if calls else text
    return AIMessage(content=content, tool_calls=calls)


def forced_call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call of an OpenAI-format ``tool``."""
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
    }


class _StreamingChatModel(ChatModel):
    """A chat model whose whole reply is its stream, joined."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(str(c.message.content) for c in self._stream(messages, stop, None, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class LlamaCppChatModel(_StreamingChatModel):
    """A local GGUF model run by llama.cpp (see ``models.llm.LocalLLM``).

    ``stream(messages, stats=Generation(), on_wait=callback)`` fills ``stats`` with prompt
    tokens, time to first token and decode speed, and calls ``on_wait`` if another caller holds
    the model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    engine: LocalLLM
    sampling: Sampling = Field(default_factory=Sampling)
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | None = None  # "any"/"required": the reply must be a tool call

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def capabilities(self) -> Capabilities:
        """Tools when the GGUF's chat template takes them; forms always (llama.cpp grammars)."""
        return Capabilities(native_tools=self.engine.template_supports_tools(), fill_form=True)

    @property
    def parameter_count(self) -> float | None:
        """The size the GGUF's metadata gives."""
        return self.engine.parameter_count

    def close(self) -> None:
        """Stop the worker process (the next call starts another)."""
        self.engine.close()

    def fill_form(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int = 256
    ) -> str:
        """JSON constrained by ``schema`` through a llama.cpp grammar."""
        return self.engine.complete_json(messages, schema, max_tokens=max_tokens)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> LlamaCppChatModel:
        """This model with ``tools`` rendered into its chat template on every call."""
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.model_copy(update={
            "bound_tools": [convert_to_openai_tool(t) for t in tools],
            "tool_choice": kwargs.get("tool_choice"),
        })  # fmt: skip

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self.bound_tools:
            return super()._generate(messages, stop, run_manager, **kwargs)
        if self.tool_choice in ("any", "required"):
            return ChatResult(generations=[ChatGeneration(message=self._forced_call(messages))])
        stats: Generation = kwargs.get("stats") or Generation()
        text = "".join(
            self.engine.stream_chat(as_dicts(messages), self.sampling, stats,
                                    kwargs.get("on_wait"), tools=self.bound_tools)
        )  # fmt: skip
        return ChatResult(generations=[ChatGeneration(message=parse_tool_calls(text))])

    def _forced_call(self, messages: list[BaseMessage]) -> AIMessage:
        """One tool call, sampled under a grammar: ``{"name": <a bound tool>, "arguments":
        <its parameters>}`` (small models asked to call a tool often answer in prose)."""
        schema = {"anyOf": [forced_call_schema(t) for t in self.bound_tools]}
        text = self.engine.complete_json(as_dicts(messages), schema, tools=self.bound_tools)
        return parse_tool_calls(f"<tool_call>{text}</tool_call>")

    @property
    def model_name(self) -> str:
        """The model file's name."""
        return self.engine.path.name

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stats: Generation = kwargs.get("stats") or Generation()
        on_wait: Callable[[], None] | None = kwargs.get("on_wait")
        pieces = self.engine.stream_chat(as_dicts(messages), self.sampling, stats, on_wait,
                                         stop=stop)  # fmt: skip
        for piece in pieces:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def get_num_tokens(self, text: str) -> int:
        """Tokens of raw text in this model's vocabulary."""
        return self.engine.count_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the whole prompt, chat template included."""
        return self.engine.count_prompt(as_dicts(messages))

    @property
    def context_window(self) -> int:
        """The model's context size in tokens."""
        return self.engine.n_ctx


class ScriptedChatModel(_StreamingChatModel):
    """A fake chat model: replies with scripted texts, in order, and records every prompt.

    When the script runs out it answers extractively: the first sentence of the first source
    in the prompt, cited as [1] (so the UI and CLI can be exercised without a real model).
    """

    responses: list[str | AIMessage] = Field(default_factory=list)
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    window: int = 4096
    native_tools: bool = False  # True: scripted AIMessages with tool calls drive the agent
    delay: float = 0.0  # seconds before the first piece (a real model's prompt time)
    pause: float = 0.0  # seconds before each piece after it (a real model's decoding)

    @property
    def capabilities(self) -> Capabilities:
        """Native tools when scripted so; forms are filled with the next scripted reply."""
        return Capabilities(native_tools=self.native_tools, fill_form=True)

    @property
    def context_window(self) -> int:
        """As set (``window``)."""
        return self.window

    @property
    def parameter_count(self) -> float | None:
        """Unknown: a fake."""
        return None

    def fill_form(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int = 256
    ) -> str:
        """The next scripted reply (the schema is the test's business)."""
        from langchain_core.messages import HumanMessage, SystemMessage

        as_messages: list[BaseMessage] = [
            SystemMessage(m["content"]) if m["role"] == "system" else HumanMessage(m["content"])
            for m in messages
        ]
        return self._reply(as_messages)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        """The same fake (its script already holds the tool calls)."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.responses and isinstance(self.responses[0], AIMessage):
            self.calls.append(list(messages))
            message = self.responses.pop(0)
            assert isinstance(message, AIMessage)
            return ChatResult(generations=[ChatGeneration(message=message)])
        return super()._generate(messages, stop, run_manager, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    @property
    def model_name(self) -> str:
        """Name shown in traces."""
        return "scripted-fake"

    def _reply(self, messages: list[BaseMessage]) -> str:
        self.calls.append(list(messages))
        if self.responses:
            reply = self.responses.pop(0)
            return str(reply.content) if isinstance(reply, AIMessage) else reply
        prompt = "\n".join(str(m.content) for m in messages)
        match = re.search(
            r'<source id="1"[^>]*>\s*(.+?)(?:(?<=[.!?。！？])\s|\n|</source>)', prompt, re.S
        )
        return f"{match.group(1).strip()} [1]" if match else "I cannot tell from the sources."

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stats: Generation | None = kwargs.get("stats")
        text = self._reply(messages)
        for word in stop or []:  # as llama.cpp does: the reply ends before a stop string
            text = text.split(word, 1)[0]
        pieces = re.findall(r"\S+\s*|\s+", text)
        if stats is not None:
            stats.prompt_tokens = self.get_num_tokens_from_messages(messages)
            stats.completion_tokens = len(pieces)
            stats.time_to_first_token, stats.seconds = self.delay, self.delay
        time.sleep(self.delay)
        for piece in pieces:
            time.sleep(self.pause)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))

    def get_num_tokens(self, text: str) -> int:
        """Words, CJK characters and punctuation marks."""
        return len(_WORDISH.findall(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of every message plus 4 per message for the template."""
        return sum(self.get_num_tokens(str(m.content)) + 4 for m in messages)
