"""Models: the chat-model protocol and its llama.cpp worker, embedders, the factory that picks
them, and what ``kb doctor`` reports."""

from kb_assistant.models.embeddings import Embedder, HashEmbedder, resolve_model
from kb_assistant.models.factory import build_chat_model, build_embedder

__all__ = ["Embedder", "HashEmbedder", "build_chat_model", "build_embedder", "resolve_model"]
