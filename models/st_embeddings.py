"""The sentence-transformers (PyTorch) embedding backend."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_assistant.errors import ModelError
from kb_assistant.models.embeddings import Embedder, HFTokenCounter, ModelFiles, normalise_rows

if TYPE_CHECKING:
    from kb_assistant.loaders.splitter import TokenCounter


class SentenceTransformerEmbedder(Embedder):
    """Runs a sentence-transformers model with PyTorch on the CPU; loads on first use."""

    def __init__(self, files: ModelFiles, *, threads: int, batch_size: int) -> None:
        self.files = files
        self.model_id = files.model_id
        self.dimension = files.dimension
        self.threads = threads
        self.batch_size = batch_size
        self._counter = HFTokenCounter(files.path / "tokenizer.json")
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def token_counter(self) -> TokenCounter:
        """The model's own tokenizer."""
        return self._counter

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory; never ask a hub
                import torch
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()

                torch.set_num_threads(self.threads)
                try:
                    self._model = SentenceTransformer(str(self.files.path), device="cpu")
                except (OSError, ValueError) as exc:
                    raise ModelError(f"{self.files.path}: cannot load the model ({exc})") from exc
                model = self._model
                # sentence-transformers 6 renamed the method; older releases have only the old name.
                dimension = getattr(model, "get_embedding_dimension", None)
                if dimension is None:
                    dimension = model.get_sentence_embedding_dimension
                self.dimension = int(dimension())
            return self._model

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed with PyTorch (sentence-transformers sorts by length within the call)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalise_rows(vectors)
