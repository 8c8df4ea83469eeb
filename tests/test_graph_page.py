"""The Graph page through AppTest: counts, building, finding an entity, its neighbourhood chart
(a click on a node), its relations and passages, and a passage's source card."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from kb_assistant.assistant import build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
from kb_assistant.ui.graph_chart import SELECTION, clicked_entity, layout
from kb_assistant.ui.i18n import Text
from kb_assistant.ui.pages.graph import duration, snippet

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
GRAPH = "ui/pages/graph.py"

FILES = {
    "zanzibar.md": (
        "# Zanzibar Foundation\n\nThe Zanzibar Foundation funds research on coral reefs. "
        "Amelia Hartwell founded the Zanzibar Foundation in Lisbon in 2004. Amelia Hartwell "
        "later worked with the Meridian Institute on ocean data.\n\n## Projects\n\nThe Meridian "
        "Institute and the Zanzibar Foundation run the Reef Atlas project together.\n"
    ),
    "wudang.md": (
        "# 武当山\n\n张三丰是武当派的创始人。张三丰在武当山修炼太极拳。"
        "武当派与少林寺齐名，张三丰的弟子宋远桥继承了武当派。\n"
    ),
    "notes.md": (
        "# Notes\n\nThe Reef Atlas project maps coral reefs near Zanzibar. Amelia Hartwell "
        "presented the Reef Atlas in Nairobi.\n"
    ),
}


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Each test builds its own Assistant (AppTest shares the process)."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def seed(kb_home: Path, tmp_path: Path, *, graph: bool = True, pdf: bool = False) -> None:
    """Ingest the small English and Chinese files (and a PDF) and, if asked, build the fast
    graph."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in FILES.items():
        (docs / name).write_text(text, encoding="utf-8")
    if pdf:
        from tests.files import make_pdf

        make_pdf(docs / "guide.pdf", [
            "Amelia Hartwell wrote this guide for the Zanzibar Foundation.", "Page two.",
        ])  # fmt: skip
    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    try:
        a.ingest([docs])
        if graph:
            a.graph_builder(mode="fast").build()
    finally:
        a.close()


def open_graph() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.switch_page(GRAPH).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def search(at: AppTest, text: str) -> AppTest:
    at.text_input(key="graph-search-default").input(text).run()
    assert not at.exception, at.exception
    return at


def relations(at: AppTest) -> list[tuple[str, str, str]]:
    table = next(d.value for d in at.dataframe if "Relation" in d.value.columns)
    return list(zip(table["Source"], table["Relation"], table["Target"], strict=True))


def chart_spec(at: AppTest) -> dict[str, Any]:
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1
    spec: dict[str, Any] = json.loads(charts[0].proto.spec)
    return spec


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_counts_then_an_entity_with_its_relations_and_passages(
    kb_home: Path, tmp_path: Path
) -> None:
    seed(kb_home, tmp_path)
    at = open_graph()
    assert at.title[0].value == "Knowledge graph of default"
    counts = metrics(at)
    assert int(counts["Entities"]) > 5 and int(counts["Relations"]) > 5
    assert int(counts["Communities"]) >= 1
    assert counts["Passages in the graph"] == "4 / 4"
    assert counts["Built with"] == "fast (NLP)"
    # Without a search: the most mentioned entities to pick from, the first one shown.
    assert at.selectbox(key="graph-doc-default").value is None
    assert any(s.label == "Most mentioned entities" for s in at.selectbox)
    assert at.subheader[0].value  # an entity is selected

    search(at, "Zanzibar Foundation")
    assert at.subheader[0].value == "Zanzibar Foundation"
    found = relations(at)
    others = {s if t == "Zanzibar Foundation" else t for s, _, t in found}
    assert {"Amelia Hartwell", "Meridian Institute", "Lisbon"} <= others
    assert all("Zanzibar Foundation" in (s, t) for s, _, t in found)
    assert "Passages that mention it (2)" in [h.value for h in at.subheader]
    body = markdown(at)
    assert "zanzibar\\.md" in body
    assert ":orange-background[Zanzibar Foundation]" in body
    spec = json.dumps(chart_spec(at), ensure_ascii=False)
    assert SELECTION in spec and "entity_id" in spec

    search(at, "张三丰")
    assert at.subheader[0].value == "张三丰"
    others = {s if t == "张三丰" else t for s, _, t in relations(at)}
    assert {"武当派", "武当山"} <= others
    assert "wudang\\.md" in markdown(at)
    assert ":orange-background[张三丰]" in markdown(at)


def test_the_page_is_in_chinese_too(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path)
    at = open_graph()
    at.sidebar.selectbox(key="language-picker").select("zh").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "default 的知识图谱"
    assert {"实体", "关系", "社区", "已入图谱的片段"} <= set(metrics(at))
    search(at, "张三丰")
    assert "关系" in next(d.value for d in at.dataframe if "起点" in d.value.columns).columns


def test_filters_by_type_and_document(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path)
    at = open_graph()
    at.multiselect(key="graph-types-default").select("place").run()
    picker = next(s for s in at.selectbox if s.label == "Most mentioned entities")
    assert picker.options and all("· place ·" in o for o in picker.options)
    at.multiselect(key="graph-types-default").select("person").run()
    search(at, "Hartwell")  # a search keeps to the chosen types too
    assert at.subheader[0].value == "Amelia Hartwell"
    search(at, "Zanzibar Foundation")  # an organisation
    assert "No entity matches 'Zanzibar Foundation'." in [i.value for i in at.info]
    search(at, "")
    at.multiselect(key="graph-types-default").unselect("place").unselect("person").run()
    doc = at.selectbox(key="graph-doc-default")
    doc.select(next(o for o in doc.options if o == "wudang.md")).run()
    assert not at.exception, at.exception
    picker = next(s for s in at.selectbox if s.label == "Most mentioned entities")
    assert any(o.startswith("张三丰") for o in picker.options)
    assert not any("Zanzibar" in o for o in picker.options)
    search(at, "Zanzibar Foundation")  # the search keeps to the document too
    assert "No entity matches 'Zanzibar Foundation'." in [i.value for i in at.info]


def test_no_graph_offers_to_build_it_and_the_button_builds_it(
    kb_home: Path, tmp_path: Path
) -> None:
    seed(kb_home, tmp_path, graph=False)
    at = open_graph()
    assert any("has no graph yet" in i.value for i in at.info)
    assert metrics(at)["Entities"] == "0"
    mode = at.radio(key="graph-mode")
    assert mode.options == ["Fast", "With the chat model"] and mode.value == "fast"
    build = at.button(key="graph-build")
    assert build.label == "Build graph"
    build.click().run()
    assert not at.exception, at.exception
    assert at.success and at.success[0].value.startswith("Graph built in")
    counts = metrics(at)
    assert int(counts["Entities"]) > 0 and int(counts["Relations"]) > 0
    assert counts["Passages in the graph"] == "4 / 4"
    assert at.button(key="graph-build").label == "Rebuild / update"
    # An update with nothing new to read keeps the graph as it is.
    at.button(key="graph-build").click().run()
    assert not at.exception, at.exception
    assert metrics(at) == counts


def test_a_passage_opens_its_source_card_with_its_page(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path, pdf=True)
    at = open_graph()
    search(at, "Amelia Hartwell")
    assert at.subheader[0].value == "Amelia Hartwell"
    assert not [e for e in at.expander if e.label.startswith("\\[")]  # no card before a click
    opens = [b for b in at.button if b.label == "Open"]
    assert len(opens) == 3  # zanzibar.md, notes.md and guide.pdf
    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    keys = [str(b.key) for b in opens]
    chunks = a.knowledge_base().catalog.chunks_by_ids(int(k.rsplit("-", 1)[1]) for k in keys)
    a.close()
    pdf = next(c for c in chunks.values() if c.name == "guide.pdf")
    number = keys.index(f"graph-open-{pdf.chunk_id}") + 1
    at.button(key=f"graph-open-{pdf.chunk_id}").click().run()
    assert not at.exception, at.exception
    card = next(e for e in at.expander if e.label.startswith(f"\\[{number}\\] guide\\.pdf"))
    assert ":orange-background[Amelia Hartwell]" in "".join(m.value for m in card.markdown)
    assert [c.value for c in card.caption] == ["Page 1 of 2"]
    assert [type(c).__name__ for c in card.children.values()].count("Image") == 1
    assert [b.label for b in at.button if b.label in ("Open", "Close")].count("Close") == 1
    # A Markdown passage has a card without a page view.
    first = next(b for b in at.button if b.label == "Open")
    first.click().run()
    cards = [e for e in at.expander if e.label.startswith("\\[")]
    assert len(cards) == 1 and "guide" not in cards[0].label
    assert not [c for c in cards[0].children.values() if type(c).__name__ == "Image"]


def test_a_click_on_a_node_selects_that_entity(
    kb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(kb_home, tmp_path)
    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    target = a.graph().search("Meridian Institute", limit=1)[0].entity_id
    a.close()
    at = open_graph()
    search(at, "Zanzibar Foundation")
    real = st.altair_chart

    def clicked(chart: Any, **kwargs: Any) -> Any:  # the browser reports a click on a node
        real(chart, **kwargs)
        return {"selection": {SELECTION: [{"entity_id": target}]}}

    monkeypatch.setattr(st, "altair_chart", clicked)
    at.run()
    assert not at.exception, at.exception
    assert at.subheader[0].value == "Meridian Institute"
    others = {s if t == "Meridian Institute" else t for s, _, t in relations(at)}
    assert "Zanzibar Foundation" in others


def test_an_empty_knowledge_base_says_so(kb_home: Path) -> None:
    at = open_graph()
    assert any("no documents yet" in i.value for i in at.info)
    assert not at.exception


# --- the page's helpers -----------------------------------------------------------------------


def test_clicked_entity_reads_the_chart_selection() -> None:
    assert clicked_entity({"selection": {SELECTION: [{"entity_id": 7}]}}) == 7
    assert clicked_entity({"selection": {SELECTION: []}}) is None
    assert clicked_entity({"selection": {}}) is None
    assert clicked_entity(None) is None


def test_layout_puts_the_entity_in_the_middle_and_is_repeatable() -> None:
    edges = [(1, 2, 1.0), (1, 3, 2.0), (2, 3, 1.0), (1, 4, 1.0)]
    first = layout(1, [1, 2, 3, 4], edges)
    assert first[1] == (0.0, 0.0)
    assert set(first) == {1, 2, 3, 4}
    assert layout(1, [1, 2, 3, 4], edges) == first
    assert layout(5, [5], []) == {5: (0.0, 0.0)}


def test_snippet_and_duration() -> None:
    text = "word " * 100 + "Zanzibar Foundation" + " word" * 100
    cut = snippet(text, ["Zanzibar Foundation"], width=80)
    assert "Zanzibar Foundation" in cut and cut.startswith("…") and cut.endswith("…")
    assert snippet("short text", ["x"]) == "short text"
    t = Text("en")
    assert duration(t, None) == "time unknown"
    assert duration(t, 12.4) == "12 s"
    assert duration(t, 600) == "10 min"
    assert Text("zh")("graph.eta.h", n="1.5") == "1.5 小时"
