"""Optional cross-encoder reranking: a model that reads query and passage together.

None ships offline and it is off by default; set ``reranker_model`` to a local
sentence-transformers cross-encoder directory (e.g. ms-marco-MiniLM-L-6-v2) to enable it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kb_assistant.errors import ModelError

Scorer = Callable[[str, Sequence[str]], list[float]]


class CrossEncoderScorer:
    """Scores (query, passage) pairs with a local cross-encoder; loads on first use."""

    def __init__(self, path: Path, threads: int) -> None:
        if not path.is_dir():
            raise ModelError(
                f"reranker model {path} not found: give a local sentence-transformers "
                "cross-encoder directory (setting reranker_model), or unset it"
            )
        self.path = path
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def __call__(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to the query (higher is better)."""
        with self._lock:
            if self._model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"
                import torch
                from sentence_transformers import CrossEncoder

                torch.set_num_threads(self.threads)
                try:
                    self._model = CrossEncoder(str(self.path), device="cpu")
                except (OSError, ValueError) as exc:
                    raise ModelError(f"{self.path}: cannot load the reranker ({exc})") from exc
        scores = self._model.predict([(query, p) for p in passages], show_progress_bar=False)
        return [float(s) for s in scores]
