"""The Graph page's chart: an entity's neighbourhood laid out by networkx and drawn by Altair,
whose node selection tells the page which entity was clicked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import altair as alt
import networkx as nx
import pandas as pd

from kb_assistant.ui.i18n import Text
from kb_assistant.vectorstore.graph import ENTITY_TYPES, Entity, Relation

LABEL = 24  # characters of a name written next to its node
SELECTION = "node"  # the chart's selection parameter
# One colour per entity type, the same on every chart (Tableau 10).
BOLD_CENTRE: tuple[tuple[str, Literal["normal", "bold"]], ...] = (
    ("!datum.centre", "normal"),
    ("datum.centre", "bold"),
)
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


def type_label(t: Text, kind: str) -> str:
    """An entity type in the page's language (an unknown one as stored)."""
    return t(f"graph.type.{kind}") if kind in ENTITY_TYPES else kind


def layout(
    centre: int, nodes: Iterable[int], edges: Iterable[tuple[int, int, float]], seed: int = 7
) -> dict[int, tuple[float, float]]:
    """Positions of ``nodes``: ``centre`` in the middle, the others spring-laid around it
    (stronger edges pull closer); the same every time for the same graph."""
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    graph.add_node(centre)
    for a, b, weight in edges:
        if a != b:
            previous = graph.get_edge_data(a, b, {}).get("weight", 0.0)
            graph.add_edge(a, b, weight=previous + weight)
    if graph.number_of_nodes() == 1:
        return {centre: (0.0, 0.0)}
    start = nx.circular_layout(graph)
    start[centre] = (0.0, 0.0)
    found = nx.spring_layout(graph, pos=start, fixed=[centre], seed=seed, weight="weight")
    return {int(i): (float(x), float(y)) for i, (x, y) in found.items()}


def neighbourhood_chart(
    t: Text, centre: int, nodes: Mapping[int, Entity], relations: Sequence[Relation]
) -> alt.LayerChart:
    """The entity ``centre``, its neighbours and the relations among them: nodes coloured by
    type and sized by mentions, relations as lines whose tooltip names them. Clicking a node
    selects its ``entity_id`` (the selection parameter ``SELECTION``)."""
    edges = [r for r in relations if r.source in nodes and r.target in nodes]
    where_ = layout(centre, nodes, ((r.source, r.target, r.strength) for r in edges))
    kinds = [type_label(t, k) for k in ENTITY_TYPES]
    present = [k for k in kinds if k in {type_label(t, e.type) for e in nodes.values()}]
    name, kind, mentions = t("graph.col_name"), t("graph.col_type"), t("graph.col_passages")
    relation = t("graph.col_relation")
    node_rows = pd.DataFrame(
        [
            {"entity_id": i, name: e.name, "label": _short(e.name), kind: type_label(t, e.type),
             mentions: e.mentions, "centre": i == centre, "x": where_[i][0], "y": where_[i][1]}
            for i, e in nodes.items()
        ]
    )  # fmt: skip
    edge_rows = pd.DataFrame(
        [
            {relation: r.label(), mentions: len(set(r.chunks)),
             "near": centre in (r.source, r.target),
             "x": where_[r.source][0], "y": where_[r.source][1],
             "x2": where_[r.target][0], "y2": where_[r.target][1],
             "mx": (where_[r.source][0] + where_[r.target][0]) / 2,
             "my": (where_[r.source][1] + where_[r.target][1]) / 2}
            for r in edges
        ],
        columns=[relation, mentions, "near", "x", "y", "x2", "y2", "mx", "my"],
    )  # fmt: skip
    xs = [p[0] for p in where_.values()]
    ys = [p[1] for p in where_.values()]
    pad = 0.15 * max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
    x = alt.X("x:Q", axis=None, scale=alt.Scale(domain=[min(xs) - pad, max(xs) + pad]))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[min(ys) - pad, max(ys) + pad]))
    pick = alt.selection_point(name=SELECTION, fields=["entity_id"], on="click", empty=False)
    lines = (
        alt.Chart(edge_rows)
        .mark_rule(color="#8a8f98")
        .encode(
            x=x, y=y, x2="x2:Q", y2="y2:Q",
            strokeOpacity=alt.condition("datum.near", alt.value(0.75), alt.value(0.3)),
            strokeWidth=alt.condition("datum.near", alt.value(1.6), alt.value(0.8)),
            tooltip=[alt.Tooltip(f"{relation}:N"), alt.Tooltip(f"{mentions}:Q")],
        )
    )  # fmt: skip
    middles = (  # an easier target than a thin line for the relation's tooltip
        alt.Chart(edge_rows)
        .mark_point(shape="diamond", size=40, filled=True, color="#8a8f98", opacity=0.5)
        .encode(
            x=alt.X("mx:Q", axis=None), y=alt.Y("my:Q", axis=None),
            tooltip=[alt.Tooltip(f"{relation}:N"), alt.Tooltip(f"{mentions}:Q")],
        )
    )  # fmt: skip
    points = (
        alt.Chart(node_rows)
        .mark_circle(opacity=1, cursor="pointer")
        .encode(
            x=x, y=y,
            color=alt.Color(f"{kind}:N", scale=alt.Scale(domain=kinds, range=list(COLOURS)),
                            legend=alt.Legend(orient="bottom", title=None, values=present)),
            size=alt.Size(f"{mentions}:Q", scale=alt.Scale(range=[120, 900]), legend=None),
            stroke=alt.condition("datum.centre", alt.value("#111111"), alt.value("#ffffff")),
            strokeWidth=alt.condition("datum.centre", alt.value(3), alt.value(1)),
            tooltip=[alt.Tooltip(f"{name}:N"), alt.Tooltip(f"{kind}:N"),
                     alt.Tooltip(f"{mentions}:Q")],
        )
        .add_params(pick)
    )  # fmt: skip
    labels = [
        alt.Chart(node_rows)
        .transform_filter(test)
        .mark_text(dy=-20, fontSize=12, fontWeight=weight)
        .encode(x=x, y=y, text="label:N")
        for test, weight in BOLD_CENTRE
    ]
    chart: alt.LayerChart = (
        alt.layer(lines, middles, points, *labels)
        .properties(height=480)
        .configure_view(strokeWidth=0)
    )
    return chart


def _short(name: str) -> str:
    return name if len(name) <= LABEL else name[: LABEL - 1] + "…"


def clicked_entity(event: Any) -> int | None:
    """The entity a click on the chart selected (``st.altair_chart``'s event), if any."""
    if not isinstance(event, Mapping):
        return None
    selection = event.get("selection")
    points = selection.get(SELECTION) if isinstance(selection, Mapping) else None
    if not isinstance(points, list) or not points or not isinstance(points[0], Mapping):
        return None
    value = points[0].get("entity_id")
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
