"""``kb graph build``: extract the chunks not yet in the graph, resolve, store, group.

The build is incremental and resumable: it extracts only chunks with no ``graph_done`` mark
(new or changed documents; a removed document already took its mentions with it), takes
extractions of unchanged text from the cache, and commits every batch in its own transaction
under the knowledge base's writer lock, so a build killed at any point keeps every batch
before it and the next build goes on from there. Changing the mode (fast ↔ llm, or another
model) rebuilds the graph from the start. Communities are found again at the end of every
build (Louvain, networkx: a second at this scale); a community's summary is written by the model
only when its members changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from kb_assistant.chains.graph_extract import REPLY_TOKENS, Extractor
from kb_assistant.chains.language import detect_language
from kb_assistant.errors import KBError
from kb_assistant.models.protocol import ChatModel
from kb_assistant.prompts import render
from kb_assistant.vectorstore.graph import Extraction, GraphStats, GraphStore
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase

logger = logging.getLogger(__name__)

REPLY_ESTIMATE = 330  # tokens of a typical extraction reply (~36 s at 11 tok/s, less the
# prompt's ~6 s: the 1.5B model on 2 cores, docs/benchmarks.md)
SYSTEM_ESTIMATE = 190  # tokens of the extraction prompt around a passage
MAX_SUMMARIES = 40  # communities summarised per build (the largest first)
MIN_COMMUNITY = 3
BUILD_LOCK = ".graph.lock"
GraphMode = Literal["fast", "llm"]


@dataclass(frozen=True)
class BuildPlan:
    """What a build would do (``--dry-run``)."""

    method: str
    chunks_total: int
    pending: int
    cached: int
    rebuild: bool
    prompt_tokens: int
    reply_tokens: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object."""
        return asdict(self)


@dataclass
class BuildProgress:
    """Chunks done of those to do, and the time left at the rate so far."""

    done: int
    total: int
    seconds: float

    @property
    def eta(self) -> float | None:
        """Seconds left, once something was done."""
        if not self.done:
            return None
        return self.seconds / self.done * (self.total - self.done)


@dataclass
class BuildReport:
    """What a build did."""

    method: str
    extracted: int = 0
    from_cache: int = 0
    failures: int = 0
    seconds: float = 0.0
    rebuilt: bool = False
    summaries: int = 0
    stopped: bool = False
    stats: GraphStats | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        data = asdict(self)
        data["stats"] = self.stats.to_json() if self.stats else None
        return data


@dataclass
class GraphBuilder:
    """Builds one knowledge base's graph with one extractor.

    Args:
        embed: texts -> unit vectors (the knowledge base's embedder), to merge entity names by
            similarity; None: by name and alias only.
        threshold: the cosine at or above which two names of one type are one entity.
        summariser: the chat model that writes community summaries; None: titles only.
        batch: chunks per transaction.
        rate: seconds per chunk measured on an earlier build (for the dry-run estimate).
    """

    kb: KnowledgeBase
    extractor: Extractor
    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    threshold: float | None = None
    summariser: ChatModel | None = None
    batch: int = 8
    rate: float | None = None
    strict_types: bool = True

    @property
    def store(self) -> GraphStore:
        """The graph tables of the knowledge base's catalog."""
        return GraphStore(self.kb.catalog)

    def plan(self, *, rebuild: bool = False) -> BuildPlan:
        """What ``build`` would extract, and an estimate of the model tokens and time."""
        store = self.store
        method = self.extractor.method
        rebuild = rebuild or store.method() not in (None, method)
        stats = store.stats()
        pending = store.pending() if not rebuild else store.all_chunks()
        cached = {} if rebuild else store.cached((h for _, _, h in pending), method)
        todo = [p for p in pending if p[2] not in cached]
        llm = method.startswith("llm:")
        prompt = sum(SYSTEM_ESTIMATE + len(text) // 3 for _, text, _ in todo) if llm else 0
        reply = REPLY_ESTIMATE * len(todo) if llm else 0
        rate = self.rate or store.rate(method) or (36.0 if llm else 0.02)
        return BuildPlan(
            method, stats.chunks_total, len(pending), len(pending) - len(todo), rebuild,
            prompt, reply, round(rate * len(todo), 1),
        )  # fmt: skip

    def build(
        self,
        *,
        on_progress: Callable[[BuildProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        rebuild: bool = False,
    ) -> BuildReport:
        """Extract every pending chunk, then find the communities (see the module docstring);
        ``rebuild``: start from nothing, the cached extractions of this method forgotten."""
        with self._one_build():
            return self._build(on_progress, should_stop, rebuild=rebuild)

    @contextmanager
    def _one_build(self) -> Iterator[None]:
        """One build of a knowledge base's graph at a time (two would mix their modes)."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.kb.folder / BUILD_LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise KBError(
                f"a graph build of knowledge base '{self.kb.name}' is already running; "
                "wait for it to finish (or stop it) and build again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _build(
        self,
        on_progress: Callable[[BuildProgress], None] | None,
        should_stop: Callable[[], bool] | None,
        *,
        rebuild: bool,
    ) -> BuildReport:
        started = time.perf_counter()
        store, method = self.store, self.extractor.method
        report = BuildReport(method)
        if rebuild or store.method() not in (None, method):
            with self.kb.locked():
                store.reset(forget=method if rebuild else None)
            report.rebuilt = True
        pending = store.pending()
        cached = store.cached((h for _, _, h in pending), method)
        ready = [(i, h, cached[h]) for i, _, h in pending if h in cached]
        for start in range(0, len(ready), 256):
            report.from_cache += self._write(ready[start : start + 256])
        todo = [p for p in pending if p[2] not in cached]
        progress = BuildProgress(0, len(todo), 0.0)
        extracting = time.perf_counter()
        for start in range(0, len(todo), self.batch):
            if should_stop is not None and should_stop():
                report.stopped = True
                break
            part = todo[start : start + self.batch]
            found = self.extractor.extract([text for _, text, _ in part])
            report.failures += sum(1 for e in found if e is None)
            report.extracted += self._write(
                [(i, h, e) for (i, _, h), e in zip(part, found, strict=True) if e is not None]
            )
            progress.done += len(part)
            progress.seconds = time.perf_counter() - extracting
            if on_progress is not None:
                on_progress(progress)
        if report.extracted:
            with self.kb.locked():
                store.set_rate(method, progress.seconds / max(progress.done, 1))
        if not report.stopped:
            report.summaries = self.communities()
            with self.kb.locked():
                store.prune_cache()
        report.seconds = round(time.perf_counter() - started, 2)
        report.stats = store.stats()
        return report

    def _write(self, results: Sequence[tuple[int, str, Extraction]]) -> int:
        if not results:
            return 0
        vectors = None
        if self.embed is not None:
            names = sorted({e.name for _, _, x in results for e in x.entities})
            if names:
                vectors = dict(zip(names, self.embed(names), strict=True))
        with self.kb.locked():
            return self.store.write(
                results, self.extractor.method, vectors=vectors, threshold=self.threshold,
                strict_types=self.strict_types,
            )  # fmt: skip

    def communities(self) -> int:
        """Group the entities (Louvain) and store the groups; returns how many summaries the
        model wrote."""
        import networkx as nx

        store = self.store
        graph = nx.Graph()
        for a, b, weight in store.edges():
            previous = graph.get_edge_data(a, b, {"weight": 0.0})["weight"]
            graph.add_edge(a, b, weight=previous + weight)
        groups = [
            sorted(group)
            for group in nx.community.louvain_communities(graph, weight="weight", seed=7)
            if len(group) >= MIN_COMMUNITY
        ] if graph.number_of_nodes() else []  # fmt: skip
        groups.sort(key=len, reverse=True)
        names = {i: n for i, n, _ in store.all_entities()}
        known = store.summaries()
        written = 0
        rows = []
        for rank, members in enumerate(groups):
            key = hashlib.sha256(json.dumps(members).encode()).hexdigest()[:16]
            central = sorted(members, key=lambda m: -graph.degree(m, weight="weight"))
            title = ", ".join(names[m] for m in central[:3])
            summary = ""
            if key in known:
                title, summary = known[key]
            elif self.summariser is not None and rank < MAX_SUMMARIES:
                title, summary = self._summarise(central, names)
                written += 1
            rows.append((key, title, summary, members))
        with self.kb.locked():
            store.replace_communities(rows)
        return written

    def _summarise(self, central: list[int], names: dict[int, str]) -> tuple[str, str]:
        assert self.summariser is not None
        store = self.store
        top = central[:12]
        entities = store.entities(top)
        relations = store.relations(top, limit=15)
        listed = "\n".join(
            f"- {e.name} ({e.type}): {e.description[:160]}" for e in entities.values()
        )
        related = "\n".join(f"- {r.label()}" for r in relations)
        language = detect_language(" ".join(names[m] for m in top) + listed)
        prompt = render("graph_community", language, entities=listed, relations=related or "-")
        schema = {
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 60},
                "summary": {"type": "string", "minLength": 1, "maxLength": 400},
            },
            "required": ["title", "summary"],
        }
        raw = self.summariser.fill_form(
            [{"role": "user", "content": prompt}], schema, max_tokens=REPLY_TOKENS // 2
        )
        try:
            data = json.loads(raw)
            return str(data["title"]), str(data["summary"])
        except (ValueError, KeyError, TypeError):
            logger.warning("a community summary did not parse")
            return ", ".join(names[m] for m in central[:3]), ""
