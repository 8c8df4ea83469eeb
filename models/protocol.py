"""The chat-model protocol: what the chains may ask of any chat model, and nothing else.

Every backend (llama.cpp in its worker, the scripted fake of the tests, and later a remote
OpenAI-compatible server) is a LangChain ``BaseChatModel`` that also implements ``ChatModel``:
streaming with statistics and a wait callback, exact token counting, its context window, its
size, and capability flags the chains ask instead of looking at concrete classes (as simonw/llm's
``Model`` has ``can_stream`` and ``supports_tools``). mypy refuses a backend that leaves one of
the abstract members out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen."""

    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    max_tokens: int = 384
    seed: int | None = None


@dataclass
class Generation:
    """What one completion cost (filled while it streams)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None
    seconds: float = 0.0
    waited: float = 0.0
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first, per second after the first."""
        if self.time_to_first_token is None or self.completion_tokens < 2:
            return None
        decode = self.seconds - self.time_to_first_token
        return (self.completion_tokens - 1) / decode if decode > 0 else None


@dataclass(frozen=True)
class Capabilities:
    """What a chat model can do beyond streaming text."""

    native_tools: bool = False  # is given tool schemas and answers with tool calls
    fill_form: bool = False  # replies with JSON constrained to a schema (a grammar)


class ChatModel(BaseChatModel, ABC):
    """A LangChain chat model the chains can rely on (see the module docstring)."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What this model can do beyond streaming text."""

    @property
    @abstractmethod
    def context_window(self) -> int:
        """The context size in tokens: prompt and answer together must fit."""

    @property
    @abstractmethod
    def parameter_count(self) -> float | None:
        """The model's size in parameters, when known (small models skip some steps)."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The name traces show."""

    @abstractmethod
    def get_num_tokens(self, text: str) -> int:
        """Tokens of raw text in this model's vocabulary (never a downloaded tokenizer)."""

    @abstractmethod
    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the whole prompt, chat template included."""

    @abstractmethod
    def fill_form(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int = 256
    ) -> str:
        """A reply that parses as JSON and fits ``schema``, in at most ``max_tokens`` (only
        when ``capabilities.fill_form``; otherwise ``ModelError``)."""

    def close(self) -> None:
        """Release what the model holds (a worker process); the next call takes it again."""

    def stream_text(
        self,
        messages: list[BaseMessage],
        *,
        stats: Generation,
        on_wait: Callable[[], None] | None = None,
        stop: list[str] | None = None,
    ) -> Iterator[str]:
        """The reply as it is generated; ``stats`` is filled as it goes, and ``on_wait`` is
        called if another caller holds the model first."""
        for chunk in self.stream(messages, stop=stop, stats=stats, on_wait=on_wait):
            yield str(chunk.content)
