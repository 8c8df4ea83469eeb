"""The knowledge graph: its counts, building it, finding an entity, its neighbourhood drawn as
an interactive graph (click a node to move to that entity), its relations, and the passages
that name it, each opening its source card.

The neighbourhood is an Altair chart laid out by networkx; a click on a node comes back as the
chart's selection (``on_select="rerun"``) and becomes the selected entity. A build runs in the
script thread with a progress bar: every batch is committed as it is done, so a build stopped
by leaving the page goes on from there the next time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from kb_assistant.errors import KBError
from kb_assistant.graph_build import BuildProgress, GraphMode
from kb_assistant.ui.graph_chart import SELECTION, clicked_entity, neighbourhood_chart, type_label
from kb_assistant.ui.i18n import Text
from kb_assistant.ui.render import highlighted, plain, where
from kb_assistant.ui.source_card import source_card
from kb_assistant.ui.state import PageContext, current_context
from kb_assistant.vectorstore.catalog import ChunkRecord
from kb_assistant.vectorstore.graph import ENTITY_TYPES, Entity, GraphStats, GraphStore, Relation

MODES: tuple[GraphMode, ...] = ("fast", "llm")
CANDIDATES = 50  # entities offered in the picker
MAX_RELATIONS = 30  # the selected entity's strongest relations drawn and listed
MAX_AROUND = 60  # relations between its neighbours drawn too
MAX_PASSAGES = 20  # mentioning passages listed
SNIPPET = 220  # characters of a passage shown before it is opened


def render(ctx: PageContext) -> None:
    """The graph page."""
    t = ctx.t
    st.title(t("graph.title", kb=ctx.kb))
    if not ctx.assistant.library.exists(ctx.kb):
        st.info(t("graph.no_kb", kb=ctx.kb))
        st.page_link("ui/pages/documents.py", label=t("nav.documents"), icon="📁")
        return
    try:
        store = ctx.assistant.graph(ctx.kb)
        stats = store.stats()
    except KBError as exc:
        st.error(str(exc))
        return
    done = st.session_state.pop("graph-built", None)
    if done is not None and done[0] == ctx.kb:
        st.success(done[1], icon=":material/check_circle:")
    _counts(t, stats)
    if stats.chunks_total == 0:
        st.info(t("graph.no_chunks", kb=ctx.kb))
        st.page_link("ui/pages/documents.py", label=t("nav.documents"), icon="📁")
        return
    if stats.method is None:
        st.info(t("graph.none"))
        _build_form(ctx, stats)
        return
    with st.expander(t("graph.update_title"), icon=":material/refresh:"):
        _build_form(ctx, stats)
    if stats.chunks_done < stats.chunks_total:
        st.caption(t("graph.pending", n=stats.chunks_total - stats.chunks_done))
    if stats.entities == 0:
        st.info(t("graph.empty"))
        return
    try:
        _explore(ctx, store)
        _communities(t, store)
    except KBError as exc:
        st.error(str(exc))


# --- counts and building ----------------------------------------------------------------------


def _counts(t: Text, stats: GraphStats) -> None:
    cols = st.columns(5)
    cols[0].metric(t("graph.entities"), stats.entities)
    cols[1].metric(t("graph.relations"), stats.relations)
    cols[2].metric(t("graph.communities"), stats.communities)
    cols[3].metric(t("graph.chunks"), f"{stats.chunks_done} / {stats.chunks_total}")
    cols[4].metric(t("graph.method"), method_label(t, stats.method))
    if stats.types:
        types = ", ".join(f"{type_label(t, k)} {n}" for k, n in stats.types.items())
        st.caption(t("graph.types_line", types=types))


def method_label(t: Text, method: str | None) -> str:
    """``fast`` / ``llm:<model>`` as the page says it."""
    if method is None:
        return t("graph.method.none")
    if method.startswith("llm:"):
        return t("graph.method.llm", model=method.removeprefix("llm:"))
    return t("graph.method.fast") if method == "fast" else method


def _build_form(ctx: PageContext, stats: GraphStats) -> None:
    """The mode choice and the Build (no graph yet) or Rebuild / update button."""
    t = ctx.t
    current: GraphMode = "llm" if (stats.method or "").startswith("llm:") else "fast"
    mode = st.radio(
        t("graph.mode"), MODES, index=MODES.index(current), key="graph-mode",
        format_func=lambda m: t(f"graph.mode.{m}"),
        captions=[t("graph.mode.fast_help"), t("graph.mode.llm_help")],
    )  # fmt: skip
    if stats.method is not None and mode != current:
        st.warning(t("graph.mode_switch"), icon=":material/warning:")
    first = stats.method is None
    pressed = st.button(
        t("graph.build") if first else t("graph.update"), key="graph-build", type="primary",
        icon=":material/hub:" if first else ":material/refresh:",
        help=None if first else t("graph.update_help"),
    )  # fmt: skip
    st.caption(t("graph.leave_note"))
    if pressed:
        _build(ctx, mode)


def _build(ctx: PageContext, mode: GraphMode) -> None:
    """Build (incrementally) with a progress bar; then show the page again with the result."""
    t = ctx.t
    bar = st.progress(0.0, text=t("graph.starting"))

    def show(p: BuildProgress) -> None:
        text = t("graph.progress", done=p.done, total=p.total, eta=duration(t, p.eta))
        bar.progress(min(1.0, p.done / max(1, p.total)), text=text)

    try:
        builder = ctx.assistant.graph_builder(ctx.kb, mode=mode)
        report = builder.build(on_progress=show, rebuild=False)
    except KBError as exc:
        bar.empty()
        st.error(str(exc))
        return
    stats = report.stats
    message = t(
        "graph.built", seconds=f"{report.seconds:.1f}", extracted=report.extracted,
        cached=report.from_cache, entities=stats.entities if stats else 0,
        relations=stats.relations if stats else 0,
    )  # fmt: skip
    if report.failures:
        message += " " + t("graph.built_failures", n=report.failures)
    st.session_state["graph-built"] = (ctx.kb, message)
    st.rerun()


def duration(t: Text, seconds: float | None) -> str:
    """A time left, in the unit that reads best."""
    if seconds is None:
        return t("graph.eta.unknown")
    if seconds < 90:
        return t("graph.eta.s", n=f"{seconds:.0f}")
    if seconds < 5400:
        return t("graph.eta.min", n=f"{seconds / 60:.0f}")
    return t("graph.eta.h", n=f"{seconds / 3600:.1f}")


# --- finding an entity ------------------------------------------------------------------------


def _explore(ctx: PageContext, store: GraphStore) -> None:
    """Search and filters, the picker, then the selected entity's neighbourhood and details."""
    t, kb = ctx.t, ctx.kb
    chosen_key = f"graph-entity-{kb}"
    search, types, document = st.columns([2, 2, 2])
    query = search.text_input(
        t("graph.search"), key=f"graph-search-{kb}", placeholder=t("graph.search_hint")
    ).strip()
    kinds: list[str] = types.multiselect(
        t("graph.types"), list(ENTITY_TYPES), key=f"graph-types-{kb}",
        format_func=lambda k: type_label(t, k),
    )  # fmt: skip
    names = {d.doc_id: d.name for d in ctx.assistant.documents(kb)}
    doc_id: int | None = document.selectbox(
        t("graph.document"), [None, *names], key=f"graph-doc-{kb}",
        format_func=lambda d: t("graph.all_documents") if d is None else names.get(d, str(d)),
    )  # fmt: skip
    candidates = _candidates(store, query, kinds, doc_id)
    selected: int | None = st.session_state.get(chosen_key)
    last_key = f"graph-last-query-{kb}"
    if query and query != st.session_state.get(last_key) and candidates:
        selected = candidates[0][0]  # a new search goes to its best match
    st.session_state[last_key] = query
    if query and not candidates:
        st.info(t("graph.no_match", query=query))
    entity = store.entities([selected]).get(selected) if selected is not None else None
    if entity is None and candidates:  # nothing chosen yet, or gone in a rebuild
        selected = candidates[0][0]
        entity = store.entities([selected]).get(selected)
    if entity is None or selected is None:
        return
    st.session_state[chosen_key] = selected
    _picker(t, kb, candidates, selected, query)
    _entity(ctx, store, entity)


def _candidates(
    store: GraphStore, query: str, kinds: Sequence[str], doc_id: int | None
) -> list[tuple[int, str, str, int]]:
    """``(id, name, type, passages)``: the entities matching the search (best first), or
    without a search the most mentioned; of the chosen types and document."""
    found: list[tuple[int, str, str, int]] = []
    if query:  # one search (best match first), kept to the chosen types
        one = kinds[0] if len(kinds) == 1 else None
        hits = store.search(query, limit=CANDIDATES * (4 if len(kinds) > 1 else 1), kind=one)
        found = [(e.entity_id, e.name, e.type, e.mentions) for e in hits
                 if not kinds or e.type in kinds]  # fmt: skip
        if doc_id is not None:  # the search knows no documents: keep those in it
            in_doc = {i for i, *_ in store.top_entities(1_000_000, doc_id=doc_id)}
            found = [c for c in found if c[0] in in_doc]
        return found[:CANDIDATES]
    each: list[str | None] = [*kinds] or [None]
    for kind in each:
        found += store.top_entities(CANDIDATES, kind=kind, doc_id=doc_id)
    if len(kinds) > 1:  # one list per type: merge them
        found.sort(key=lambda c: (-c[3], c[0]))
    return found[:CANDIDATES]


def _picker(
    t: Text, kb: str, candidates: list[tuple[int, str, str, int]], selected: int, query: str
) -> None:
    """A list of the candidates to choose from (the chart's clicks choose too)."""
    if not candidates:
        return
    labels = {
        i: t("graph.candidate", name=name, type=type_label(t, kind), n=n)
        for i, name, kind, n in candidates
    }
    ids = list(labels)
    key = f"graph-pick-{kb}-{selected}-{len(ids)}-{ids[0]}"

    def picked() -> None:
        value = st.session_state.get(key)
        if value is not None:
            st.session_state[f"graph-entity-{kb}"] = value

    st.selectbox(
        t("graph.matches", n=len(ids), query=query) if query else t("graph.top"), ids,
        index=ids.index(selected) if selected in ids else None, key=key,
        format_func=labels.__getitem__, placeholder=t("graph.pick"), on_change=picked,
    )  # fmt: skip


# --- the selected entity ----------------------------------------------------------------------


def _entity(ctx: PageContext, store: GraphStore, entity: Entity) -> None:
    t = ctx.t
    relations = store.relations([entity.entity_id], limit=MAX_RELATIONS)
    around = _neighbours(entity.entity_id, relations)
    nodes = store.entities([entity.entity_id, *around])
    between = [
        r
        for r in store.relations(around, limit=MAX_AROUND * 4)
        if r.source in nodes and r.target in nodes and entity.entity_id not in (r.source, r.target)
    ][:MAX_AROUND]
    chart_col, about = st.columns([3, 2])
    with chart_col:
        chart = neighbourhood_chart(t, entity.entity_id, nodes, relations + between)
        event = st.altair_chart(
            chart, on_select="rerun", selection_mode=SELECTION, width="stretch",
            key=f"graph-chart-{ctx.kb}-{entity.entity_id}",
        )  # fmt: skip
        st.caption(t("graph.chart_help"))
    clicked = clicked_entity(event)
    if clicked is not None and clicked != entity.entity_id and clicked in nodes:
        st.session_state[f"graph-entity-{ctx.kb}"] = clicked
        st.session_state.pop(f"graph-passage-{ctx.kb}", None)
        st.rerun()
    with about:
        st.subheader(plain(entity.name))
        st.caption(
            t("graph.about", type=type_label(t, entity.type), mentions=entity.mentions,
              degree=entity.degree)
        )  # fmt: skip
        if entity.aliases:
            st.markdown(plain(t("graph.aliases", aliases=", ".join(entity.aliases))))
        if entity.description:
            st.markdown(plain(entity.description))
    _relations(t, entity, relations)
    _passages(ctx, store, entity)


def _neighbours(entity_id: int, relations: Iterable[Relation]) -> list[int]:
    """The other ends of ``relations``, strongest first."""
    ends = (r.target if r.source == entity_id else r.source for r in relations)
    return [i for i in dict.fromkeys(ends) if i != entity_id]


def _relations(t: Text, entity: Entity, relations: list[Relation]) -> None:
    st.subheader(t("graph.relations_title", n=entity.degree))
    if not relations:
        st.caption(t("graph.no_relations"))
        return
    if entity.degree > len(relations):
        st.caption(t("graph.relations_more", n=len(relations)))
    rows = [
        {t("graph.col_source"): r.source_name, t("graph.col_relation"): r.relation,
         t("graph.col_target"): r.target_name, t("graph.col_passages"): len(set(r.chunks)),
         t("graph.col_description"): r.description}
        for r in relations
    ]  # fmt: skip
    st.dataframe(rows, hide_index=True, width="stretch")


def _passages(ctx: PageContext, store: GraphStore, entity: Entity) -> None:
    """The passages that mention the entity; the one opened shows its source card."""
    t, kb = ctx.t, ctx.kb
    chunk_ids = store.mention_chunks([entity.entity_id]).get(entity.entity_id, [])
    st.subheader(t("graph.passages_title", n=len(chunk_ids)))
    shown = chunk_ids[:MAX_PASSAGES]
    if len(chunk_ids) > len(shown):
        st.caption(t("graph.passages_more", shown=len(shown), total=len(chunk_ids)))
    chunks = ctx.assistant.knowledge_base(kb).catalog.chunks_by_ids(shown)
    terms = sorted({entity.name, *entity.aliases}, key=len, reverse=True)
    open_key = f"graph-passage-{kb}"

    def toggle(chunk_id: int) -> None:
        opened = st.session_state.get(open_key) == chunk_id
        st.session_state[open_key] = None if opened else chunk_id

    for n, chunk_id in enumerate(shown, start=1):
        c = chunks.get(chunk_id)
        if c is None:
            continue
        is_open = st.session_state.get(open_key) == chunk_id
        with st.container(border=True):
            text, button = st.columns([6, 1], vertical_alignment="center")
            place = f"[{n}] " + _where(t, c)
            if c.heading:
                place += f" · {c.heading}"
            text.markdown(f"**{plain(place)}**")
            text.markdown(highlighted(snippet(c.text, terms), terms))
            button.button(
                t("graph.close") if is_open else t("graph.open"), key=f"graph-open-{chunk_id}",
                on_click=toggle, args=(chunk_id,), width="stretch",
                icon=":material/close:" if is_open else ":material/open_in_full:",
            )  # fmt: skip
        if is_open:
            _card(t, n, c, terms)


def _where(t: Text, c: ChunkRecord) -> str:
    name = c.name or Path(c.source).name
    return where(name, c.page, c.sheet, t("where.page"), t("where.sheet"))


def _card(t: Text, n: int, c: ChunkRecord, terms: list[str]) -> None:
    citation: dict[str, Any] = {
        "n": n, "source": c.source, "name": c.name, "page": c.page, "sheet": c.sheet,
        "heading": c.heading, "text": c.text, "ocr": c.ocr, "boxes": [list(b) for b in c.boxes],
    }  # fmt: skip
    source_card(t, citation, terms, page_key=f"graph-{c.chunk_id}", expanded=True)


def snippet(text: str, terms: Sequence[str], width: int = SNIPPET) -> str:
    """About ``width`` characters of ``text`` around the first of ``terms`` found in it."""
    flat = re.sub(r"\s+", " ", text).strip()
    if len(flat) <= width:
        return flat
    lowered = flat.casefold()
    hits = [p for p in (lowered.find(term.casefold()) for term in terms if term) if p >= 0]
    start = max(0, min(hits) - width // 3) if hits else 0
    end = min(len(flat), start + width)
    start = max(0, end - width)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


def _communities(t: Text, store: GraphStore) -> None:
    communities = store.communities()
    if not communities:
        return
    with st.expander(t("graph.communities_title", n=len(communities)), icon=":material/groups:"):
        rows = [
            {t("graph.col_title"): c.title, t("graph.col_size"): c.size,
             t("graph.col_summary"): c.summary}
            for c in communities
        ]  # fmt: skip
        st.dataframe(rows, hide_index=True, width="stretch")


if __name__ == "__main__":  # run by st.navigation as a page
    render(current_context())
