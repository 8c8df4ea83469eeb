"""``kb graph export``: the graph as GraphML (Gephi, yEd, Neo4j's APOC) or node-link JSON
(networkx, d3)."""

from __future__ import annotations

import io
import json
from typing import Any, Literal

from kb_assistant.vectorstore.graph.store import GraphStore

ExportFormat = Literal["graphml", "json"]


def to_networkx(store: GraphStore) -> Any:
    """A ``networkx.MultiDiGraph``: entities (name, type, description, mentions, chunk ids,
    community) and relations (relation, description, strength, chunk ids); read in whole
    tables, so a graph of any size exports."""
    import networkx as nx

    graph = nx.MultiDiGraph()
    entities, relations, chunks = store.dump()
    community = {m: c.community_id for c in store.communities() for m in c.members}
    for entity_id, name, kind, description, mentions in entities:
        graph.add_node(
            entity_id, name=name, type=kind, description=description or "",
            mentions=mentions, chunks=",".join(map(str, chunks.get(entity_id, []))),
            community=community.get(entity_id, -1),
        )  # fmt: skip
    for relation in relations:
        graph.add_edge(
            relation.source, relation.target, key=relation.relation_id,
            relation=relation.relation, description=relation.description,
            strength=relation.strength, chunks=",".join(map(str, relation.chunks)),
        )  # fmt: skip
    return graph


def export(store: GraphStore, fmt: ExportFormat) -> str:
    """The whole graph as GraphML or node-link JSON text."""
    import networkx as nx

    graph = to_networkx(store)
    if fmt == "json":
        data = nx.node_link_data(graph, edges="links")
        data["communities"] = [
            {"id": c.community_id, "title": c.title, "summary": c.summary, "members": c.members}
            for c in store.communities()
        ]
        return json.dumps(data, ensure_ascii=False, indent=1)
    out = io.BytesIO()
    nx.write_graphml(graph, out, encoding="utf-8")
    return out.getvalue().decode("utf-8")
