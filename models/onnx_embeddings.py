"""The ONNX Runtime embedding backend.

On first use the sentence-transformers model (from its local directory; nothing is fetched) is
exported to ONNX with PyTorch and, by default, quantised to int8 per channel, in a child
process (PyTorch's ~700 MB would otherwise stay in the ingesting process for its whole run);
the files are cached under ``<model cache>/<model>-<fingerprint>/`` and later runs load them
without torch.
Texts are sorted by length and batched so that padding is small.

Measured on the 2-core development machine (all-MiniLM-L6-v2, ~94-token chunks, batch 32):
PyTorch 42 chunks/s; ONNX fp32 67 (identical vectors); ONNX int8 108 (mean cosine to fp32
0.987). See docs/benchmarks.md for retrieval quality with each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_assistant.errors import ModelError
from kb_assistant.models.embeddings import Embedder, HFTokenCounter, ModelFiles, normalise_rows
from kb_assistant.processes import python_code

if TYPE_CHECKING:
    from kb_assistant.loaders.splitter import TokenCounter

logger = logging.getLogger(__name__)
EXPORT_FORMAT = 1  # bump when the export changes, so old caches are not reused


class OnnxEmbedder(Embedder):
    """An encoder run by ONNX Runtime; subclasses say where the model file comes from.

    The tokenizer is the token counter's (``HFTokenCounter``): one tokenizer per model, no
    truncation inside it; texts longer than the model's window are cut here, keeping the
    closing special token.
    """

    def __init__(
        self,
        *,
        model_id: str,
        dimension: int,
        max_tokens: int,
        pooling: str,
        threads: int,
        batch_size: int,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        self.model_id = model_id
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.threads = threads
        self.batch_size = batch_size
        self.batch_tokens = max(batch_size * 64, max_tokens * 8)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self._session: Any = None
        self._pad_id = 0
        self._lock = threading.Lock()

    @abstractmethod
    def prepare(self) -> Path:
        """Make the ONNX file exist (export or convert it once) and return its path."""

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                path = self.prepare()
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.log_severity_level = 3
                # Memory patterns are planned per input shape; with every batch a new shape
                # they only pile up (peak RSS 1054 -> 721 MB on the benchmark, and faster).
                options.enable_mem_pattern = False
                # Idle pool threads would spin for a while after each call, taking the cores
                # FAISS, SQLite and the parser need next (a query's dense search ran 2-4x
                # slower right after embedding it).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                try:
                    session = ort.InferenceSession(
                        str(path), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # onnxruntime raises its own untyped errors
                    raise ModelError(
                        f"{path}: cannot load the prepared model ({exc}); delete "
                        f"{path.parent} and it will be prepared again"
                    ) from exc
                self._inputs = {i.name for i in session.get_inputs()}
                self._session = session
            return self._session

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages (with the model's passage prefix, if it has one)."""
        return self._embed([self.passage_prefix + t for t in texts])

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries (with the model's query prefix, if it has one)."""
        return self._embed([self.query_prefix + t for t in texts])

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in length-sorted batches; rows come back in the order given."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        session = self._load()
        tokenizer = self.token_counter.tokenizer  # type: ignore[attr-defined]
        encoded = [
            (e.ids[: self.max_tokens - 1] + e.ids[-1:], e.type_ids[: self.max_tokens])
            if len(e.ids) > self.max_tokens else (e.ids, e.type_ids)
            for e in tokenizer.encode_batch(list(texts))
        ]  # fmt: skip
        lengths = [len(ids) for ids, _ in encoded]
        order = [int(i) for i in np.argsort(lengths, kind="stable")]
        batch: list[int] = []
        for i in order:
            # Attention memory grows with batch x length^2: cap tokens per batch, so short
            # texts go in big batches and long ones in small batches.
            if batch and (
                len(batch) >= self.batch_size or (len(batch) + 1) * lengths[i] > self.batch_tokens
            ):
                out[batch] = self._embed_batch(session, [encoded[j] for j in batch])
                batch = []
            batch.append(i)
        if batch:
            out[batch] = self._embed_batch(session, [encoded[j] for j in batch])
        return normalise_rows(out)

    def _embed_batch(self, session: Any, encoded: list[tuple[list[int], list[int]]]) -> np.ndarray:
        width = max(len(ids) for ids, _ in encoded)
        ids = np.full((len(encoded), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        types = np.zeros((len(encoded), width), dtype=np.int64)
        for row, (row_ids, row_types) in enumerate(encoded):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
            types[row, : len(row_types)] = row_types
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = types
        hidden = session.run(None, feed)[0]
        return _pool(hidden, mask, self.pooling)


class ExportedEmbedder(OnnxEmbedder):
    """A sentence-transformers model, exported to ONNX once (with PyTorch, in a child) and
    cached."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        cache_dir: Path,
        quantize: bool,
        threads: int,
        batch_size: int,
    ) -> None:
        super().__init__(
            model_id=files.model_id, dimension=files.dimension, max_tokens=files.max_tokens,
            pooling=files.pooling, threads=threads, batch_size=batch_size,
        )  # fmt: skip
        self.files = files
        self.quantize = quantize
        self.cache_dir = cache_dir / f"{_slug(files.model_id)}-{_fingerprint(files)}"
        self._counter = HFTokenCounter(files.path / "tokenizer.json")
        padding = json.loads((files.path / "tokenizer.json").read_text(encoding="utf-8")).get(
            "padding"
        )
        self._pad_id = int((padding or {}).get("pad_id", 0))

    @property
    def token_counter(self) -> TokenCounter:
        """The model's own tokenizer."""
        return self._counter

    @property
    def onnx_path(self) -> Path:
        """The ONNX file this embedder runs."""
        return self.cache_dir / ("model.int8.onnx" if self.quantize else "model.onnx")

    def prepare(self) -> Path:
        """Export (and quantise) once; later calls find the cached file."""
        ensure_exported(self.files, self.cache_dir, quantize=self.quantize)
        return self.onnx_path


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(np.float32)
    if mode == "max":
        return np.where(weights > 0, hidden, -1e9).max(axis=1)  # type: ignore[no-any-return]
    summed = (hidden * weights).sum(axis=1)
    return summed / np.clip(weights.sum(axis=1), 1e-9, None)  # type: ignore[no-any-return]


def _slug(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in model_id).strip("-")


def _fingerprint(files: ModelFiles) -> str:
    """Changes when the model's files or our export change; cheap (no hashing of weights)."""
    facts: dict[str, object] = {"format": EXPORT_FORMAT, "path": str(files.path)}
    for name in sorted(os.listdir(files.path)):
        stat = (files.path / name).stat()
        facts[name] = [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def ensure_exported(files: ModelFiles, cache_dir: Path, *, quantize: bool) -> None:
    """Export (and quantise) the model into ``cache_dir`` unless that was done before.

    Concurrent processes wait on a file lock; files appear atomically (temp + rename).
    """
    target = cache_dir / ("model.int8.onnx" if quantize else "model.onnx")
    if target.is_file():
        return
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / ".export.lock")):
        if target.is_file():
            return  # another process exported it while this one waited
        logger.warning("Exporting %s to ONNX (once; cached in %s)", files.model_id, cache_dir)
        job = {"model": str(files.path), "fp32": str(cache_dir / "model.onnx"),
               "int8": str(target) if quantize else None}  # fmt: skip
        done = subprocess.run(
            python_code("import sys; from kb_assistant.models.onnx_embeddings import export_job; "
                        "export_job(sys.argv[1])", json.dumps(job)),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise ModelError(f"exporting {files.model_id} to ONNX failed: {reason}")


def export_job(job_json: str) -> None:
    """The export child: ``{"model", "fp32", "int8" or null}`` paths; exits 1 with the reason."""
    job = json.loads(job_json)
    try:
        fp32 = Path(job["fp32"])
        if not fp32.is_file():
            _export(Path(job["model"]), fp32)
        if job["int8"] and not Path(job["int8"]).is_file():
            _quantize(fp32, Path(job["int8"]))
    except ModelError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def _export(model_path: Path, target: Path) -> None:
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelError(
            "exporting the embedding model to ONNX needs torch and transformers "
            "('pip install torch==2.13.0 transformers'), or set embedding_backend = "
            "'sentence-transformers'"
        ) from exc

    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()
    with_types = int(getattr(model.config, "type_vocab_size", 0) or 0) > 0
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if with_types else [])]

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = torch.ones((2, 8), dtype=torch.int64)
    args = tuple(sample if n != "token_type_ids" else torch.zeros_like(sample) for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    temp = target.with_suffix(".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow
        torch.onnx.export(
            LastHidden(), args, str(temp), input_names=names,
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    os.replace(temp, target)


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temp = target.with_suffix(".tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a generic pre-processing hint on root
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(temp), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    os.replace(temp, target)
