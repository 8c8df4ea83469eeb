"""The composition root and facade: everything the CLI and the Streamlit page can do.

``build_assistant(settings, embeddings=...)`` wires the parts; the ``Assistant`` it returns is
the Python API of kb-assistant. Nothing here imports Streamlit or prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from kb_assistant import uploads
from kb_assistant.chains import Answer, RagChain, RagParams, history_from
from kb_assistant.chains.agent import AgentLimits, AgentResult, AgentStep, AgentTools, run_agent
from kb_assistant.chains.citations import Citation
from kb_assistant.chains.graph_extract import ModelExtractor, NlpExtractor
from kb_assistant.chains.graph_retrieval import CONTEXT, GraphRanking, GraphRetriever
from kb_assistant.chains.guard import new_canary
from kb_assistant.chains.tools.sql import run_query
from kb_assistant.errors import (
    DocumentNotFound,
    EmbeddingMismatch,
    KBError,
    KnowledgeBaseExists,
    ModelError,
)
from kb_assistant.graph_build import GraphBuilder, GraphMode
from kb_assistant.ingest import IngestReport, ProgressCallback, ingest
from kb_assistant.loaders.sandbox import ParseLimits
from kb_assistant.models.embeddings import Embedder, normalise_rows
from kb_assistant.models.factory import build_chat_model, build_embedder
from kb_assistant.models.protocol import ChatModel
from kb_assistant.models.reranker import CrossEncoderScorer, Scorer
from kb_assistant.reindex import ReindexProgress, ReindexReport, reindex
from kb_assistant.settings import Settings, load_settings
from kb_assistant.vectorstore import (
    DocumentRecord,
    KnowledgeBase,
    KnowledgeBaseSummary,
    Library,
    SearchHit,
    validate_name,
)
from kb_assistant.vectorstore.conversations import ConversationStore
from kb_assistant.vectorstore.databases import QueryResult
from kb_assistant.vectorstore.files import atomic_write_bytes
from kb_assistant.vectorstore.graph import GraphStore
from kb_assistant.vectorstore.hybrid import hybrid_search, rerank, with_graph
from kb_assistant.vectorstore.integrity import CheckReport
from kb_assistant.vectorstore.tables import TableInfo, TableRegistry
from kb_assistant.vectorstore.vector_store import VectorStoreConfig

logger = logging.getLogger(__name__)
MAX_K = 100
CONDENSE_FROM = 1e9  # parameters: smaller models answer instead of rewriting a follow-up


class Assistant:
    """kb-assistant's public API over one data directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        embeddings: Embedder | None = None,
        chat_model: ChatModel | None = None,
        reranker: Scorer | None = None,
    ) -> None:
        self.settings = settings
        self.library = Library(settings.home, vector_store_config(settings))
        self._embedder = embeddings
        self._injected = embeddings is not None
        self._embedders: dict[str, Embedder] = {}
        self._chat_model = chat_model
        self._conversations: ConversationStore | None = None
        self._reranker: Scorer | None = reranker
        self._open: dict[str, KnowledgeBase] = {}
        self._graph_retrievers: dict[str, GraphRetriever] = {}
        self._lock = threading.RLock()
        # The prompts' secret (chains.guard): one per Assistant, so prompts share a prefix.
        self.canary = new_canary()

    # --- components ---------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The embedding model of new knowledge bases (built on first use; heavy libraries load
        on first embed)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = build_embedder(self.settings)
            return self._embedder

    def embedder_for(self, base: KnowledgeBase) -> Embedder:
        """The embedding model a knowledge base was built with (its manifest names it): a
        knowledge base keeps its model when the default changes.

        Raises:
            EmbeddingMismatch: that model cannot be built here (e.g. a model directory that
                the settings no longer name); the message says what to set.
        """
        wanted = base.refresh().embedding_model
        default = self.embedder
        if default.model_id == wanted or self._injected:
            base.manifest.check_embedding(default.model_id, default.dimension)
            return default
        with self._lock:
            if wanted not in self._embedders:
                try:
                    built = build_embedder(self.settings, wanted)
                except ModelError:
                    built = default  # the check below names both models and what to do
                self._embedders[wanted] = built
            embedder = self._embedders[wanted]
        base.manifest.check_embedding(embedder.model_id, embedder.dimension)
        return embedder

    @property
    def chat_model(self) -> ChatModel:
        """The chat model, one per Assistant (the GGUF loads on first use)."""
        with self._lock:
            if self._chat_model is None:
                self._chat_model = build_chat_model(self.settings)
            return self._chat_model

    @property
    def conversations(self) -> ConversationStore:
        """Saved conversations (``<home>/chats.sqlite``)."""
        with self._lock:
            if self._conversations is None:
                self._conversations = ConversationStore(self.settings.home / "chats.sqlite")
            return self._conversations

    def _kb_name(self, name: str | None) -> str:
        return name or self.settings.kb

    def knowledge_base(self, name: str | None = None) -> KnowledgeBase:
        """An existing knowledge base, opened once and kept.

        Raises:
            KnowledgeBaseNotFound: no such knowledge base.
        """
        name = self._kb_name(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = self.library.open(name)
            return self._open[name]

    def close(self) -> None:
        """Close every open knowledge base and stop the chat model's worker (both reopen on
        next use)."""
        with self._lock:
            if self._chat_model is not None:
                self._chat_model.close()
            for kb in self._open.values():
                kb.close()
            self._open.clear()
            if self._conversations is not None:
                self._conversations.close()
                self._conversations = None

    # --- knowledge bases ----------------------------------------------------------------

    def list_kbs(self) -> list[KnowledgeBaseSummary]:
        """Every knowledge base with its size and embedding model."""
        return self.library.summaries()

    def create_kb(self, name: str) -> KnowledgeBase:
        """Create an empty knowledge base for the configured embedding model.

        Raises:
            KnowledgeBaseExists / InvalidName: the name is taken or unusable.
        """
        embedder = self.embedder
        kb = self.library.create(
            name,
            embedding_model=embedder.model_id,
            dimension=embedder.dimension,
            chunk_tokens=self.settings.chunk_tokens,
            overlap=self.settings.chunk_overlap,
        )
        with self._lock:
            self._open[name] = kb
        return kb

    def delete_kb(self, name: str) -> str | None:
        """Delete a knowledge base and all it holds; returns a warning when something outside
        its folder (a Milvus server's collection) could not be deleted with it.

        Raises:
            KnowledgeBaseNotFound: no such knowledge base.
        """
        with self._lock:
            kb = self._open.pop(name, None)
            if kb is not None:
                kb.close()
        return self.library.delete(name)

    def check_kb(self, name: str | None = None, *, repair: bool = False) -> CheckReport:
        """Verify a knowledge base (``kb check``); with ``repair``, rebuild what can be rebuilt.

        Raises:
            KnowledgeBaseNotFound: there is no such knowledge base folder.
            KnowledgeBaseLocked: ``repair`` waited too long for a running ingest.
        """
        from kb_assistant.vectorstore.integrity import check

        name = self._kb_name(name)
        folder = self.library.folder(name)
        with self._lock:
            kb = self._open.pop(name, None)  # reopened (and re-verified) on next use
            if kb is not None:
                kb.close()
        return check(folder, repair=repair, vectors=self.library.vectors)

    # --- documents ----------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[Path | str],
        *,
        kb: str | None = None,
        progress: ProgressCallback | None = None,
        on_wait: Callable[[], None] | None = None,
        names: dict[str, str] | None = None,
        engine: Literal["local", "ray"] = "local",
        ray_address: str | None = None,
    ) -> IngestReport:
        """Ingest files and folders, creating the knowledge base if needed.

        ``names`` gives documents a name other than their file's, by path (stored uploads: the
        name the browser sent, kept as an escaped label, see ``uploads.label``). ``engine``
        "ray" reads and embeds on the Ray cluster at ``ray_address`` (see ``ingest_ray``);
        this process still writes.

        Raises:
            EmbeddingMismatch: the knowledge base was built with another embedding model.
            KnowledgeBaseLocked: another writer did not finish in time.
            ConfigError: the Ray engine without Ray installed, or its cluster unreachable.
        """
        if engine == "ray":
            from kb_assistant.ingest_ray import import_ray

            import_ray()  # before the knowledge base is created: say what to install first
        name = self._kb_name(kb)
        if not self.library.exists(name):
            # Another process may create it a moment before us: then use that one.
            with contextlib.suppress(KnowledgeBaseExists):
                self.create_kb(name)
        base = self.knowledge_base(name)
        embedder = self.embedder_for(base)
        limits = ParseLimits(
            timeout=self.settings.parse_timeout_s, memory_mb=self.settings.parse_memory_mb
        )
        run_on = None
        if engine == "ray":
            from kb_assistant.ingest_ray import RayJob, ray_engine

            # Workers need the parsing and embedding settings, never the secrets: whatever is
            # sent lands in the cluster's object store, readable by any job there.
            secretless = self.settings.model_copy(
                update={"chat_api_key": None, "milvus_token": None, "app_password": None}
            )
            job = RayJob(
                secretless, embedder.model_id, embedder.dimension,
                self.settings.chunk_tokens, self.settings.chunk_overlap, limits,
            )  # fmt: skip
            run_on = ray_engine(job, address=ray_address)
        return ingest(
            base,
            embedder,
            [Path(p) for p in paths],
            chunk_tokens=self.settings.chunk_tokens,
            chunk_overlap=self.settings.chunk_overlap,
            max_rows=self.settings.max_rows_per_table,
            ocr=self.settings.ocr,
            names={p: uploads.label(n) for p, n in (names or {}).items()},
            parse_limits=limits,
            batch_size=self.settings.embedding_batch_size,
            progress=progress,
            on_wait=on_wait,
            engine=run_on,
        )

    def reindex(
        self,
        *,
        kb: str | None = None,
        embedding_model: str | None = None,
        progress: ReindexProgress | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> ReindexReport:
        """Re-embed a knowledge base's stored chunks with another embedding model (default:
        the configured one) and switch to it at once; no file is read again.

        Raises:
            KnowledgeBaseNotFound / KnowledgeBaseLocked: as for ingest.
            ModelError: the model cannot be built; the knowledge base is unchanged.
        """
        base = self.knowledge_base(kb)
        if embedding_model is None or embedding_model == self.settings.embedding_model:
            embedder = self.embedder
        else:
            embedder = build_embedder(self.settings, embedding_model)
        report = reindex(base, embedder, batch_size=self.settings.embedding_batch_size * 8,
                         progress=progress, on_wait=on_wait)  # fmt: skip
        with self._lock:
            self._embedders[embedder.model_id] = embedder
        return report

    def save_upload(self, filename: str, data: bytes, *, kb: str | None = None) -> Path:
        """Check and store an uploaded file; returns where it is (see ``uploads``).

        Stored as ``<home>/uploads/<kb>/<content hash>/upload<ext>``: the browser's name never
        becomes a path, and the same content uploaded twice lands on the same path (so ingest
        sees it unchanged).

        Raises:
            UploadRejected: too large, of an unsupported type, or not what its name says.
        """
        ext = uploads.check(filename, data, max_bytes=self.settings.max_upload_mb << 20)
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = self.settings.home / "uploads" / validate_name(self._kb_name(kb)) / digest
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"upload{ext}"
        if not target.exists():
            atomic_write_bytes(target, data)  # written, fsync'd, then renamed into place
        return target

    def documents(self, kb: str | None = None) -> list[DocumentRecord]:
        """The documents of a knowledge base, oldest first."""
        return self.knowledge_base(kb).documents()

    def resolve_documents(self, refs: Sequence[str], kb: str | None = None) -> list[DocumentRecord]:
        """Documents named by id, full source path, or file name (when unambiguous).

        Raises:
            DocumentNotFound: for the first reference that matches nothing or several documents.
        """
        docs = self.documents(kb)
        chosen: dict[int, DocumentRecord] = {}
        for ref in refs:
            matches = _match(docs, ref)
            if not matches:
                raise DocumentNotFound(
                    f"no document '{ref}' in knowledge base '{self._kb_name(kb)}'; "
                    "'kb docs' lists ids, sources and names"
                )
            if len(matches) > 1:
                ids = ", ".join(str(d.doc_id) for d in matches)
                raise DocumentNotFound(f"'{ref}' names several documents (ids {ids}); use an id")
            chosen[matches[0].doc_id] = matches[0]
        return list(chosen.values())

    def remove(self, refs: Sequence[str], *, kb: str | None = None) -> list[DocumentRecord]:
        """Remove documents (their chunks and vectors); all references are checked first.

        Raises:
            DocumentNotFound: a reference matched nothing; nothing was removed.
        """
        base = self.knowledge_base(kb)
        targets = self.resolve_documents(refs, kb)
        with base.writer() as writer:
            for doc in targets:
                writer.remove_document(doc.doc_id)
        return targets

    def search(self, query: str, *, k: int = 5, kb: str | None = None) -> list[SearchHit]:
        """The ``k`` chunks most similar to ``query``.

        Raises:
            KBError: empty query or ``k`` out of range.
            EmbeddingMismatch: the knowledge base was built with another embedding model.
        """
        if not query.strip():
            raise KBError("the search query is empty; type a question or some keywords")
        if not 1 <= k <= MAX_K:
            raise KBError(f"k must be between 1 and {MAX_K} (got {k})")
        base = self.knowledge_base(kb)
        mode = self.settings.retrieval_mode
        vector = None
        if mode != "keyword":
            vector = self.embedder_for(base).embed_queries([query])[0]
        scorer = self.reranker
        # With a reranker, fuse a wider pool and let the cross-encoder pick the best k.
        wanted = max(k, 2 * k if scorer else k)
        alone = self._graph_ranking(base, query, ()) if mode == "graph" else GraphRanking()
        hits = hybrid_search(
            base, query, vector, wanted, mode="hybrid" if mode == "hybrid+graph" else mode,
            pool=self.settings.retrieval_pool, keyword_weight=self.settings.keyword_weight,
            graph=alone.chunk_ids, graph_facts=alone.facts,
        )  # fmt: skip
        if mode == "hybrid+graph":
            # The graph's best passages come after the prompt's usual ones (see with_graph).
            ranking = self._graph_ranking(base, query, [h.chunk.chunk_id for h in hits[:CONTEXT]])
            count = self.settings.graph_passages
            keep = max(min(self.settings.max_sources, wanted - count), 1)
            hits = with_graph(base, hits, ranking.chunk_ids, ranking.facts, keep=keep, count=count)[
                :wanted
            ]
        return rerank(query, hits, scorer)[:k] if scorer and hits else hits

    def _graph_ranking(
        self, base: KnowledgeBase, query: str, context: Sequence[int]
    ) -> GraphRanking:
        """The graph's ranking for ``query`` (its retriever kept per knowledge base, so the
        alias table is read once per graph change)."""
        with self._lock:
            retriever = self._graph_retrievers.get(base.name)
            if retriever is None or retriever.store.catalog is not base.catalog:
                retriever = GraphRetriever(GraphStore(base.catalog))
                self._graph_retrievers[base.name] = retriever
        return retriever.rank(query, self.settings.retrieval_pool, context)

    @property
    def reranker(self) -> Scorer | None:
        """The cross-encoder scorer, if one is configured (``reranker_model``)."""
        with self._lock:
            if self._reranker is None and self.settings.reranker_model is not None:
                self._reranker = CrossEncoderScorer(
                    self.settings.reranker_model, self.settings.effective_threads
                )
            return self._reranker

    # --- the knowledge graph --------------------------------------------------------------

    def graph(self, kb: str | None = None) -> GraphStore:
        """The knowledge graph of a knowledge base (read it; ``graph_builder`` builds it)."""
        return GraphStore(self.knowledge_base(kb).catalog)

    def graph_builder(
        self, kb: str | None = None, *, mode: GraphMode = "fast", glean: bool = False
    ) -> GraphBuilder:
        """A builder of a knowledge base's graph: ``fast`` (NLP, no chat model) or ``llm``
        (the chat model under a grammar; it also writes the community summaries).

        Raises:
            ModelError: llm mode with a chat model that cannot reply under a JSON schema.
        """
        base = self.knowledge_base(kb)
        catalog = base.catalog
        if mode == "fast":
            nlp = NlpExtractor(catalog.document_frequency, catalog.chunk_count())
            return GraphBuilder(base, nlp, batch=32, strict_types=False)
        model = self.chat_model
        embedder = self.embedder_for(base)
        return GraphBuilder(
            base, ModelExtractor(model, glean=glean),
            embed=lambda names: normalise_rows(embedder.embed_array(names)),
            threshold=self.settings.graph_merge_cosine, summariser=model, batch=4,
        )  # fmt: skip

    # --- tables and databases -------------------------------------------------------------

    def _tables(self, kb: str | None, *, create: bool = False) -> TableRegistry:
        name = self._kb_name(kb)
        if create and not self.library.exists(name):
            with contextlib.suppress(KnowledgeBaseExists):
                self.create_kb(name)
        return TableRegistry(self.knowledge_base(name).folder)

    def add_table(
        self, path: Path | str, *, name: str | None = None, kb: str | None = None
    ) -> list[TableInfo]:
        """Load a CSV, Excel or PDF file as table(s) of a knowledge base (created if needed)."""
        registry = self._tables(kb, create=True)
        with self.knowledge_base(kb).locked():
            return registry.add_file(Path(path).expanduser(), name)

    def connect_database(self, url: str, *, name: str, kb: str | None = None) -> list[TableInfo]:
        """Connect a database (``sqlite:///file.db``, ``postgresql://...``) under ``name``."""
        registry = self._tables(kb, create=True)
        with self.knowledge_base(kb).locked():
            return registry.connect(url, name)

    def drop_table(self, name: str, *, kb: str | None = None) -> None:
        """Remove an uploaded table or disconnect a database."""
        registry = self._tables(kb)
        with self.knowledge_base(kb).locked():
            registry.drop(name)

    def tables(self, kb: str | None = None) -> list[TableInfo]:
        """Every table the knowledge base can query, with its columns."""
        return self._tables(kb).describe()

    def sql(self, query: str, *, database: str | None = None, kb: str | None = None) -> QueryResult:
        """Run one read-only query on the uploaded tables or a connected database.

        Raises:
            QueryRejected: the query breaks a safety rule (see ``chains.tools.sql``).
            QueryTimeout: it ran past the time limit.
        """
        return run_query(
            self._tables(kb).database(database), query,
            row_cap=self.settings.max_rows_per_query, time_limit=self.settings.query_time_limit,
        )  # fmt: skip

    # --- answers ------------------------------------------------------------------------

    def rag_chain(self, kb: str | None = None) -> RagChain:
        """The answering chain over one knowledge base."""
        s = self.settings
        min_dense = s.abstain_min_dense
        model = self.embedder
        if self.library.exists(self._kb_name(kb)):
            with contextlib.suppress(EmbeddingMismatch):  # search names the mismatch
                model = self.embedder_for(self.knowledge_base(kb))
        if min_dense is None:
            min_dense = model.abstain_cosine
        # hybrid+graph: the graph's passages come on top of the usual ones (see with_graph)
        extra = s.graph_passages if s.retrieval_mode == "hybrid+graph" else 0
        sources = s.max_sources + extra
        params = RagParams(
            candidates=max(s.retrieval_k, sources), max_passages=sources,
            passage_token_budget=s.source_token_budget * sources // s.max_sources,
            answer_tokens=s.max_tokens,
            min_dense=min_dense, min_coverage=s.abstain_min_coverage,
            min_dense_cross=None if s.abstain_min_dense is not None
            else model.abstain_cosine_cross,
            support_cosine=model.support_cosine,
            language=None if s.answer_language == "auto" else s.answer_language,
            condense=self._condenses(),
        )  # fmt: skip
        return RagChain(
            lambda q, k: self.search(q, k=k, kb=kb), self.chat_model, params,
            fetch=lambda ids: self._fetch(ids, kb), canary=self.canary,
            embed=model.embed_array,
        )  # fmt: skip

    def _condenses(self) -> bool:
        """Whether follow-ups are rewritten by the model (``condense_follow_ups``)."""
        mode = self.settings.condense_follow_ups
        if mode != "auto":
            return mode == "always"
        size = self.chat_model.parameter_count
        return size is None or size >= CONDENSE_FROM  # unknown: nothing says it is too small

    def _fetch(self, chunk_ids: Sequence[int], kb: str | None) -> list[SearchHit]:
        """Stored chunks by id, in the order given (missing ones left out)."""
        rows = self.knowledge_base(kb).catalog.chunks_by_ids(chunk_ids)
        return [SearchHit(0, 0.0, rows[i]) for i in chunk_ids if i in rows]

    def ask(
        self,
        question: str,
        *,
        kb: str | None = None,
        conversation: str | None = None,
        on_token: Callable[[str], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        on_passages: Callable[[list[Citation]], None] | None = None,
    ) -> Answer:
        """Answer a question from a knowledge base; with ``conversation`` (its id), as a
        follow-up in it, and saved there. ``on_passages`` hears the passages before the model
        reads them.

        Raises:
            KBError: empty question; KnowledgeBaseNotFound; SessionNotFound; ModelError.
        """
        if not question.strip():
            raise KBError("the question is empty")
        history = []
        if conversation is not None:
            info = self.conversations.get(conversation)
            kb = kb or info.kb
            history = history_from(self.conversations.turns(info.session_id))
        self.knowledge_base(kb)  # fail early, before any model loads, if it does not exist
        result = self.rag_chain(kb).answer(
            question.strip(), history, on_token=on_token, on_wait=on_wait, on_passages=on_passages
        )
        if conversation is not None:
            data = result.to_json()
            self.conversations.add(
                info.session_id, question.strip(), result.answer,
                refused=result.refused, citations=data["citations"], trace=result.trace,
            )  # fmt: skip
        return result

    def agent(
        self,
        question: str,
        *,
        kb: str | None = None,
        on_step: Callable[[AgentStep], None] | None = None,
    ) -> AgentResult:
        """Answer a question with the agent: documents, tables and databases as tools.

        Raises:
            KBError: empty question; KnowledgeBaseNotFound; ModelError.
        """
        if not question.strip():
            raise KBError("the question is empty")
        name = self._kb_name(kb)
        base = self.knowledge_base(name)
        has_documents = base.catalog.chunk_count() > 0
        s = self.settings
        limits = AgentLimits(s.agent_max_steps, s.agent_max_seconds, s.max_rows_per_query,
                             s.query_time_limit)  # fmt: skip
        tools = AgentTools(
            TableRegistry(base.folder),
            (lambda q, k: self.search(q, k=k, kb=name)) if has_documents else None,
            limits,
        )
        return run_agent(
            question.strip(), tools, self.chat_model,
            answer_documents=lambda q: self.rag_chain(name).answer(q),
            on_step=on_step, canary=self.canary, native_tools=s.agent_native_tools,
        )  # fmt: skip

    def new_conversation(self, kb: str | None = None, title: str = "") -> str:
        """Start a saved conversation over a knowledge base; returns its id."""
        name = self._kb_name(kb)
        self.knowledge_base(name)
        return self.conversations.create(name, title)


def _match(docs: list[DocumentRecord], ref: str) -> list[DocumentRecord]:
    if ref.isdigit():
        return [d for d in docs if d.doc_id == int(ref)]
    full = str(Path(ref).expanduser().absolute())
    by_source = [d for d in docs if d.source in (ref, full)]
    return by_source or [d for d in docs if d.name == ref]


def vector_store_config(settings: Settings) -> VectorStoreConfig:
    """The vector store knowledge bases use, from the settings (Milvus only when chosen)."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    return VectorStoreConfig(settings.vector_store, settings.milvus_uri, token)


def build_assistant(
    settings: Settings | None = None,
    *,
    embeddings: Embedder | None = None,
    chat_model: ChatModel | None = None,
) -> Assistant:
    """Wire an Assistant; ``embeddings``/``chat_model`` replace the configured models."""
    return Assistant(settings or load_settings(), embeddings=embeddings, chat_model=chat_model)
