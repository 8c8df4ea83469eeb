"""Hybrid retrieval: dense (FAISS) and keyword (FTS5) rankings fused by reciprocal rank.

Reciprocal rank fusion (Cormack et al., 2009) scores a chunk ``sum(1 / (k + rank))`` over the
rankings that found it: it needs no score calibration between cosine and BM25, and a chunk both
rankers like rises above one only one of them likes. Near-duplicates (PDF and HTML of one
manual, a paragraph pasted twice) are then dropped so the prompt is not one passage five times.

Navigation — a table of contents, a chapter's list of sections — repeats the headings of the
sections it points to, so it ranks high for any question a heading resembles, yet answers
none. A chunk most of whose lines are numbered headings keeps only ``NAVIGATION_WEIGHT`` of
its fused score (in the Debian FAQ 51 of 446 chunks are such lists, in English and Chinese).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from kb_assistant.vectorstore.keywords import keyword_tokens, query_terms
from kb_assistant.vectorstore.knowledge_base import KnowledgeBase, SearchHit

RetrievalMode = Literal["hybrid", "dense", "keyword", "graph", "hybrid+graph"]
RRF_K = 60
NAVIGATION_WEIGHT = 0.5

# a numbered heading line: "3.1.2. Title", "A.1 Title", "Chapter 4. Title", "第 5 章 标题"
# (not "1. Step": a numbered procedure is an answer, not navigation)
_HEADING_LINE = re.compile(
    r"^\s*(?:\d+(?:\.\d+)+\.?|[A-Z]\.\d+(?:\.\d+)*\.?|(?:Chapter|Appendix|Part|Section)\s+\w+\.?"
    r"|第\s*[\d一二三四五六七八九十百]+\s*[章节部分篇])\s*\S"
)


def is_navigation(text: str, min_lines: int = 4, share: float = 0.5) -> bool:
    """Whether a chunk is mostly a list of numbered headings (a table of contents)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < min_lines:
        return False
    headings = sum(1 for line in lines if len(line) < 160 and _HEADING_LINE.match(line))
    return headings >= share * len(lines)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None, k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse rankings of ids (best first) into one, best first, with fused scores.

    ``weights`` scale each ranking's contribution (default: all 1).
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


def jaccard(a: set[str], b: set[str]) -> float:
    """Overlap of two word sets (1.0 = same words)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def drop_near_duplicates(hits: list[SearchHit], threshold: float) -> list[SearchHit]:
    """Keep the best of each group of hits whose words overlap at least ``threshold``."""
    kept: list[SearchHit] = []
    seen: list[set[str]] = []
    for hit in hits:
        words = set(keyword_tokens(hit.chunk.text))
        if any(jaccard(words, other) >= threshold for other in seen):
            continue
        kept.append(hit)
        seen.append(words)
    return kept


def rerank(
    query: str, hits: list[SearchHit], scorer: Callable[[str, Sequence[str]], list[float]]
) -> list[SearchHit]:
    """Reorder hits by a cross-encoder's scores (kept in ``score``; the parts stay as they are)."""
    scores = scorer(query, [h.chunk.text for h in hits])
    ordered = sorted(zip(scores, hits, strict=True), key=lambda pair: -pair[0])
    return [replace(h, rank=rank, score=score) for rank, (score, h) in enumerate(ordered, start=1)]


def hybrid_search(
    kb: KnowledgeBase,
    query: str,
    vector: np.ndarray | None,
    k: int,
    *,
    mode: RetrievalMode = "hybrid",
    pool: int = 30,
    keyword_weight: float = 1.0,
    duplicate_threshold: float = 0.8,
    graph: Sequence[int] = (),
    graph_facts: Mapping[int, Sequence[str]] | None = None,
) -> list[SearchHit]:
    """The ``k`` best chunks for ``query``; each hit carries its dense, keyword and fused scores.

    Args:
        vector: the query's embedding (not needed in keyword mode).
        pool: how many candidates each ranker contributes before fusion.
        keyword_weight: the keyword ranking's weight in the fusion (dense has weight 1).
        duplicate_threshold: word-overlap above which a lower-ranked hit is dropped.
        graph: the knowledge graph's ranking of chunk ids (mode ``graph``: it comes first,
            then dense search's; an empty one leaves dense search alone). ``hybrid+graph``
            is ``hybrid`` here; ``with_graph`` adds the graph's passages after.
        graph_facts: why the graph ranked each chunk (carried by the hits).
    """
    pool = max(pool, k)
    graph_only = mode == "graph" and bool(graph)
    use_dense = vector is not None and mode != "keyword"
    dense = kb.search(vector, pool) if use_dense and vector is not None else []
    use_keyword = mode in ("hybrid", "keyword")
    keyword = kb.keyword_search(query_terms(query), pool) if use_keyword else []
    ranked_graph = list(graph)[:pool] if mode == "graph" else []
    dense_by_id = {h.chunk.chunk_id: (h.rank, h.score) for h in dense}
    keyword_by_id = {chunk_id: (rank, score) for rank, (chunk_id, score) in enumerate(keyword, 1)}
    # graph mode: the graph's ranking first, then dense search's in its order (a vanishing
    # weight), which also gives every hit the cosine the abstention check reads
    fused = reciprocal_rank_fusion(
        [[h.chunk.chunk_id for h in dense], [chunk_id for chunk_id, _ in keyword], ranked_graph],
        [1e-6 if graph_only else 1.0, keyword_weight, 1.0],
    )
    chunks = {h.chunk.chunk_id: h.chunk for h in dense}
    chunks.update(kb.catalog.chunks_by_ids(i for i, _ in fused if i not in chunks))
    facts = graph_facts or {}
    hits = [
        SearchHit(
            rank=0, score=score, chunk=chunks[chunk_id],
            dense_score=dense_by_id.get(chunk_id, (None, None))[1],
            keyword_score=keyword_by_id.get(chunk_id, (None, None))[1],
            graph=tuple(dict.fromkeys(facts.get(chunk_id, ()))),
        )
        for chunk_id, score in fused
        if chunk_id in chunks
    ]  # fmt: skip
    hits = sorted(
        (h if not is_navigation(h.chunk.text) else replace(h, score=h.score * NAVIGATION_WEIGHT)
         for h in hits),
        key=lambda h: -h.score,
    )  # fmt: skip
    hits = drop_near_duplicates(hits, duplicate_threshold)[:k]
    return [replace(h, rank=i) for i, h in enumerate(hits, start=1)]


def with_graph(
    kb: KnowledgeBase,
    hits: list[SearchHit],
    graph: Sequence[int],
    facts: Mapping[int, Sequence[str]],
    *,
    keep: int,
    count: int,
) -> list[SearchHit]:
    """``hybrid+graph``: the first ``keep`` hits (the passages a prompt holds) stay first, then
    the graph's ``count`` best chunks not among them, then the rest.

    Not a third ranking in the fusion: reciprocal ranks of neighbours differ by ~1/3600 at
    k = 60, so any third vote reorders the top, and on the FAQ dev sets a graph vote of even
    0.2 took recall@1 from 0.92 to 0.66. Nor one of the prompt's usual places: taking the
    third passage's place lost 1 English and 3 Chinese dev answers of 30 (docs/benchmarks.md).
    The graph is for the passage dense and keyword search miss — the second hop of a
    question — so it gets places of its own after theirs.
    """
    first = hits[:keep]
    taken = {h.chunk.chunk_id for h in first}
    extra_ids = [c for c in graph if c not in taken][:count]
    known = {h.chunk.chunk_id: h for h in hits}
    rows = kb.catalog.chunks_by_ids(c for c in extra_ids if c not in known)
    extra = [
        replace(known[c], graph=tuple(dict.fromkeys(facts.get(c, ()))))
        if c in known else SearchHit(0, 0.0, rows[c], graph=tuple(dict.fromkeys(facts.get(c, ()))))
        for c in extra_ids
        if c in known or c in rows
    ]  # fmt: skip
    chosen = {h.chunk.chunk_id for h in extra} | taken
    ordered = first + extra + [h for h in hits[keep:] if h.chunk.chunk_id not in chosen]
    return [replace(h, rank=i) for i, h in enumerate(ordered, start=1)]
