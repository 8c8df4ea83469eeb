"""Which models the settings ask for: the one place that picks a backend.

Backends are chosen by a typed mode (``embedding_backend``, ``chat_backend``) that includes
``fake``; the heavy libraries (ONNX Runtime, torch, llama.cpp) load inside the branch that
needs them, on first use, never at import. Kept apart from the backends so that none of them
imports another through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kb_assistant.errors import ModelError
from kb_assistant.models.chat import LlamaCppChatModel, ScriptedChatModel
from kb_assistant.models.e5 import E5_MODEL_ID, E5_NAME, E5Embedder, packaged_e5
from kb_assistant.models.embeddings import (
    DEFAULT_MODEL_ID,
    DEFAULT_MODEL_NAME,
    Embedder,
    HashEmbedder,
    resolve_model,
)
from kb_assistant.models.llm import LocalLLM, is_remote_model, resolve_chat_model
from kb_assistant.models.protocol import ChatModel, Sampling

if TYPE_CHECKING:
    from kb_assistant.models.remote import RemoteChatModel
    from kb_assistant.settings import Settings


EMBEDDING_MODELS = {E5_NAME: E5_MODEL_ID, DEFAULT_MODEL_NAME: DEFAULT_MODEL_ID}  # name -> model id


def build_embedder(settings: Settings, model: str | None = None) -> Embedder:
    """The embedder for ``model`` (a name, model id or directory; default: the settings'
    ``embedding_model``); heavy libraries load on first use, not here.

    Raises:
        ModelError: the model is not installed, or the backend cannot run it.
    """
    if settings.embedding_backend == "fake":
        return HashEmbedder()
    name = model or settings.embedding_model
    if name in (E5_NAME, E5_MODEL_ID):
        if settings.embedding_backend != "onnx":
            raise ModelError(
                f"the embedding model '{E5_NAME}' runs on the onnx backend only; set "
                "embedding_backend = 'onnx'"
            )

        return E5Embedder(
            packaged_e5(), cache_dir=settings.model_cache_dir,
            threads=settings.effective_threads, batch_size=settings.embedding_batch_size,
        )  # fmt: skip
    files = resolve_model(name)
    if settings.embedding_backend == "onnx":
        from kb_assistant.models.onnx_embeddings import ExportedEmbedder

        if not files.plain:
            raise ModelError(
                f"{files.path}: this model has layers beyond Transformer + Pooling, which the "
                "onnx backend does not export; set embedding_backend = 'sentence-transformers'"
            )
        return ExportedEmbedder(
            files,
            cache_dir=settings.model_cache_dir,
            quantize=settings.embedding_quantize,
            threads=settings.effective_threads,
            batch_size=settings.embedding_batch_size,
        )
    from kb_assistant.models.st_embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        files, threads=settings.effective_threads, batch_size=settings.embedding_batch_size
    )


def sampling_from(settings: Settings) -> Sampling:
    """The sampling settings."""
    return Sampling(
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        repeat_penalty=settings.repeat_penalty, max_tokens=settings.max_tokens,
        seed=settings.seed,
    )  # fmt: skip


def build_chat_model(settings: Settings) -> ChatModel:
    """The chat model the settings ask for; the GGUF loads on first use, not here. A
    ``chat_model`` of the form ``openai:URL#model`` is a server (``models.remote``), whatever
    ``chat_backend`` says but ``fake``; nothing is asked of it here.

    Raises:
        ModelError: a local model that is not installed or not a GGUF file; an ``openai:``
            value that is not a server address.
    """
    if settings.chat_backend == "fake":
        return ScriptedChatModel()
    if is_remote_model(settings.chat_model):
        return build_remote_chat_model(settings)
    engine = LocalLLM(
        resolve_chat_model(settings.chat_model, settings.model_cache_dir),
        context_cap=settings.context_size,
        n_gpu_layers=settings.n_gpu_layers,
        threads=settings.effective_threads,
        lora_path=settings.lora_path,
        prompt_cache_bytes=settings.prompt_cache_mb * 2**20,
    )
    return LlamaCppChatModel(engine=engine, sampling=sampling_from(settings))


def build_remote_chat_model(settings: Settings) -> RemoteChatModel:
    """The chat model on the server ``chat_model`` names (``openai:URL#model``), with the
    ``chat_api_key``; nothing is asked of the server until the model is used.

    Raises:
        ModelError: ``chat_model`` is not a server address of that form.
    """
    from kb_assistant.models.remote import RemoteChatModel
    from kb_assistant.models.remote_server import RemoteServer, parse_remote

    key = settings.chat_api_key.get_secret_value() if settings.chat_api_key else None
    server = RemoteServer(parse_remote(settings.chat_model), api_key=key or None)
    return RemoteChatModel(
        server=server, sampling=sampling_from(settings), fallback_context=settings.context_size
    )
