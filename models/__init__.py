"""Models: embeddings now; the llama.cpp chat model joins them with the answering feature."""

from kb_assistant.models.embeddings import Embedder, HashEmbedder, build_embedder, resolve_model

__all__ = ["Embedder", "HashEmbedder", "build_embedder", "resolve_model"]
