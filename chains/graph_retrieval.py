"""Retrieval through the knowledge graph: a third ranking of chunks, fused with dense and keyword
results by the same weighted reciprocal-rank fusion (``retrieval_mode = hybrid+graph``).

1. Entities are linked from the question by their names and aliases (whole words for Latin
   names, substrings for Chinese ones), each weighted by its rarity, ``log(1 + chunks /
   chunks mentioning it)``: "Debian" in a Debian FAQ says little, "Bruce Perens" a lot.
2. A chunk scores for every linked entity it mentions, for every relation of a linked entity it
   states, and — the second hop — for mentioning an entity those relations lead to, so a
   passage about ``B`` is found from a question naming ``A`` when the documents relate them.
3. "Global" questions (the main themes, 总结…) are answered from the communities: the best
   matching (or largest) communities each contribute the chunks that mention most of their
   members, so the passages span the collection; the trace shows the communities' summaries.

Every ranked chunk carries the facts that ranked it (``entity: …``, ``relation: a —r→ b``,
``community: …``), which the trace shows; citations still point to chunks and pages.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from kb_assistant.vectorstore.graph import Community, GraphStore, Relation, normalise

MAX_SEEDS = 6
MAX_RELATIONS = 40
MAX_NEIGHBOURS = 12
CHUNKS_PER_ENTITY = 60
RELATION_SHARE = 0.5  # a chunk stating a relation of a linked entity, against mentioning it
HOP_SHARE = 0.35  # a chunk mentioning an entity one relation away
CONTEXT_SHARE = 0.7  # an entity of a top passage, against one the question names
CONTEXT = 3  # top passages of dense and keyword search whose entities seed the graph
GLOBAL_COMMUNITIES = 5
GLOBAL_RARITY = math.log(11)  # an entity in under a tenth of the chunks makes a question specific
_GLOBAL = re.compile(
    r"\b(?:main|key|major|overall|common|recurring)\s+(?:themes?|topics?|ideas?|points?|subjects?)"
    r"|\bsummari[sz]e\b|\boverview\b|\bwhat\s+(?:is|are)\s+(?:this|these|the)\s+"
    r"(?:documents?|collection|files?|knowledge base)\s+about\b"
    r"|总结|概述|概括|综述|主要(?:内容|主题|话题|观点)|讲了什么|有哪些主题|讲的是什么",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"[\w+]+(?:[-./_][\w+]+)*")


def is_global(question: str) -> bool:
    """Whether a question asks about the whole collection rather than a fact in it."""
    return _GLOBAL.search(question) is not None


@dataclass
class GraphRanking:
    """Chunks best first, with the facts that ranked each one."""

    chunk_ids: list[int] = field(default_factory=list)
    facts: dict[int, list[str]] = field(default_factory=dict)
    entities: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    communities: list[str] = field(default_factory=list)


class GraphRetriever:
    """Ranks a knowledge base's chunks for a question through its graph."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self._version = -1
        self._latin: dict[str, list[tuple[int, int]]] = {}
        self._chinese: list[tuple[str, int, int]] = []
        self._chunks = 1
        self._counts: dict[int, int] = {}

    def _aliases(self) -> None:
        version = self.store.version()
        if version == self._version:
            return
        latin: dict[str, list[tuple[int, int]]] = defaultdict(list)
        chinese = []
        counts: dict[int, int] = {}
        for alias, entity_id, mentions in self.store.aliases():
            counts[entity_id] = mentions
            if _CJK.search(alias):
                if len(alias) >= 2:
                    chinese.append((alias, entity_id, mentions))
            elif len(alias) >= 2:
                latin[alias].append((entity_id, mentions))
        self._latin, self._chinese, self._counts = dict(latin), chinese, counts
        self._version = version
        self._chunks = max(self.store.stats().chunks_done, 1)

    def link(self, question: str) -> dict[int, float]:
        """Entities the question names, with their weights (rarest first, at most
        ``MAX_SEEDS``)."""
        self._aliases()
        text = normalise(question)
        words = [w.casefold() for w in _WORD.findall(text)]
        grams = {" ".join(words[i : i + n]) for n in range(1, 5) for i in range(len(words))}
        found: dict[int, float] = {}
        for gram in grams:
            for entity_id, mentions in self._latin.get(gram, ()):
                found[entity_id] = self._weight(mentions)
        for alias, entity_id, mentions in self._chinese:
            if alias in text:
                found[entity_id] = self._weight(mentions)
        best = sorted(found.items(), key=lambda pair: -pair[1])[:MAX_SEEDS]
        return dict(best)

    def _mentions(self, entity_id: int) -> int:
        return self._counts.get(entity_id, 1)

    def _weight(self, mentions: int) -> float:
        return math.log(1 + self._chunks / max(mentions, 1))

    def rank(self, question: str, pool: int, context: Sequence[int] = ()) -> GraphRanking:
        """The ``pool`` best chunks for ``question`` through the graph (empty when the graph
        knows none of its entities and it is not a global question).

        ``context``: the chunks dense and keyword search ranked first. The rare entities they
        mention are seeds too (the bridge of a two-hop question is named in the passage that
        answers its first hop, not in the question), and they are left out of the ranking:
        the graph's vote goes to the passages those rankers did not find.
        """
        seeds = self.link(question)
        # "summarise how apt pinning works" names something specific: not a global question
        if is_global(question) and all(w < GLOBAL_RARITY for w in seeds.values()):
            return self._global(seeds, pool)
        for entities in self.store.chunk_entities(context).values():
            for entity_id in entities:
                weight = CONTEXT_SHARE * self._weight(self._mentions(entity_id))
                if weight > seeds.get(entity_id, 0.0):
                    seeds[entity_id] = weight
        seeds = dict(sorted(seeds.items(), key=lambda pair: -pair[1])[:MAX_SEEDS])
        if not seeds:
            return GraphRanking()
        scores: dict[int, float] = defaultdict(float)
        facts: dict[int, list[str]] = defaultdict(list)
        names = {i: e.name for i, e in self.store.entities(seeds).items()}
        for entity_id, chunks in self.store.mention_chunks(seeds).items():
            for chunk_id in chunks[:CHUNKS_PER_ENTITY]:
                scores[chunk_id] += seeds[entity_id]
                facts[chunk_id].append(f"entity: {names.get(entity_id, entity_id)}")
        relations = self.store.relations(seeds, limit=MAX_RELATIONS)
        self._hops(relations, seeds, scores, facts)
        excluded = set(context)
        ranked = sorted((c for c in scores if c not in excluded), key=lambda c: (-scores[c], c))
        ranked = ranked[:pool]
        return GraphRanking(
            ranked, {c: facts[c] for c in ranked}, list(names.values()),
            [r.label() for r in relations[:MAX_NEIGHBOURS]],
        )  # fmt: skip

    def _hops(
        self,
        relations: list[Relation],
        seeds: dict[int, float],
        scores: dict[int, float],
        facts: dict[int, list[str]],
    ) -> None:
        top = max((r.strength for r in relations), default=1.0) or 1.0
        neighbours: dict[int, float] = {}
        for relation in relations:
            seed = relation.source if relation.source in seeds else relation.target
            other = relation.target if seed == relation.source else relation.source
            share = seeds[seed] * (0.5 + 0.5 * relation.strength / top)
            for chunk_id in relation.chunks[:CHUNKS_PER_ENTITY]:
                scores[chunk_id] += RELATION_SHARE * share
                facts[chunk_id].append(f"relation: {relation.label()}")
            if other not in seeds:
                neighbours[other] = max(neighbours.get(other, 0.0), share)
        best = sorted(neighbours.items(), key=lambda pair: -pair[1])[:MAX_NEIGHBOURS]
        hop = dict(best)
        names = {i: e.name for i, e in self.store.entities(hop).items()}
        for entity_id, chunks in self.store.mention_chunks(hop).items():
            rarity = self._weight(len(chunks)) / max(self._weight(1), 1e-9)
            for chunk_id in chunks[:CHUNKS_PER_ENTITY]:
                scores[chunk_id] += HOP_SHARE * hop[entity_id] * rarity
                facts[chunk_id].append(f"entity: {names.get(entity_id, entity_id)}")

    def _global(self, seeds: dict[int, float], pool: int) -> GraphRanking:
        communities = self.store.communities()
        if not communities:
            return GraphRanking()
        chosen = sorted(
            communities, key=lambda c: (-sum(seeds.get(m, 0.0) for m in c.members), -c.size)
        )[:GLOBAL_COMMUNITIES]
        per = [self._community_chunks(c, max(pool // len(chosen), 1)) for c in chosen]
        ranked: list[int] = []
        facts: dict[int, list[str]] = {}
        for depth in range(max(len(p) for p in per)):
            for community, chunks in zip(chosen, per, strict=True):
                if depth < len(chunks) and chunks[depth] not in facts:
                    ranked.append(chunks[depth])
                    about = f" — {community.summary[:200]}" if community.summary else ""
                    facts[chunks[depth]] = [f"community: {community.title}{about}"]
        return GraphRanking(
            ranked[:pool], facts, [], [],
            [f"{c.title}: {c.summary}" if c.summary else c.title for c in chosen],
        )  # fmt: skip

    def _community_chunks(self, community: Community, limit: int) -> list[int]:
        counts: dict[int, int] = defaultdict(int)
        for chunks in self.store.mention_chunks(community.members[:40]).values():
            for chunk_id in chunks:
                counts[chunk_id] += 1
        return sorted(counts, key=lambda c: (-counts[c], c))[:limit]
