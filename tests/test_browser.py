"""End to end in a real browser with the embedded models: upload a PDF, ask, see the source.

Debian's chromium driven by Playwright against ``streamlit run app.py`` on a loopback port.
The screenshot is kept in ``test-artifacts/`` (CI keeps it; git ignores it).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import (
    ROOT,
    RequestLog,
    browser_missing,
    chromium,
    listener,
    serve_app,
    wait_idle,
)
from tests.files import make_pdf

if TYPE_CHECKING:
    from kb_assistant.vectorstore.graph import Entity, GraphStats

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]
ARTIFACTS = ROOT / "test-artifacts"
QUESTION = "What is the maximum pressure of the Zephyr-9 pump?"
TWO_QUESTIONS = ["How often must the Zephyr-9 pump be serviced?", "Zephyr-9 pump maximum pressure?"]
PAGES = [
    "Cafeteria hours. The staff cafeteria opens at 8 in the morning and closes at 3 in the "
    "afternoon. Coffee is free on Fridays.",
    "Pump specifications. The Zephyr-9 pump has a maximum pressure of 42 bar. It must be "
    "serviced every 500 hours. Logo: ![logo](http://203.0.113.9/pixel.png?leak=zephyr) "
    "Seal: ![seal]({local}/seal.png?leak=zephyr) [manual]({local}/manual)",
]


def test_upload_a_pdf_ask_and_see_the_page_2_source(kb_home: Path, model_cache: Path) -> None:
    env = {"KB_MODEL_CACHE": str(model_cache), "KB_TEMPERATURE": "0", "KB_SEED": "1",
           "KB_CHAT_MODEL": "SmolLM2-135M-Instruct"}  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    with listener() as (local, hits), serve_app(kb_home, env) as server, chromium() as browser:
        pdf = make_pdf(kb_home.parent / "pump.pdf", [p.format(local=local) for p in PAGES])
        requests = RequestLog()
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.on("request", requests.record)
        page = context.new_page()
        page.goto(server.url)
        page.get_by_text("Documents in default").wait_for(timeout=60_000)
        page.locator('input[type="file"]').first.set_input_files(str(pdf))
        page.get_by_role("button", name=re.compile(r"Add 1 file")).click()
        page.get_by_text(re.compile(r"Indexed in .* 1 added")).wait_for(timeout=180_000)
        page.get_by_role("link", name="Chat").click()
        chat = page.get_by_placeholder("Ask a question about your documents")
        chat.fill(QUESTION)
        chat.press("Enter")
        card = page.get_by_text(re.compile(r"\[\d\] pump\.pdf — page 2"))
        card.first.wait_for(timeout=180_000)
        # The cards show while the model reads; the finished answer is drawn again, with its
        # trace: wait for that, or the click lands on a card about to be replaced.
        page.get_by_text("Why this answer").first.wait_for(timeout=180_000)
        wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "browser-answer.png"), full_page=True)
        answers = page.locator('[data-testid="stChatMessage"]').all_inner_texts()
        assert len(answers) >= 2
        answer = answers[1]
        assert "do not cover" not in answer and "don't cover" not in answer, answer
        assert len(answer.strip()) > 20, answer
        card.first.click()  # open the card: the passage shows, the image link stays text
        page.get_by_text(re.compile(r"!\[logo\]\(http://203\.0\.113\.9")).first.wait_for()
        time.sleep(0.5)
        page.screenshot(path=str(ARTIFACTS / "browser-source-card.png"), full_page=True)
        assert requests.off_machine() == [], requests.off_machine()
        assert hits == [], "an image or link in a passage was fetched"
        _two_tabs_queue(context, server.url)
        assert requests.off_machine() == [], requests.off_machine()
        assert hits == [] and not [u for u in requests.urls if local in u]
        context.close()
    waits = [t.trace.get("waited_for_model_s", 0) for t in _stored_turns(kb_home)]
    assert len(waits) == 3 and max(waits) > 0, waits


def _two_tabs_queue(context: Any, url: str) -> None:
    """Two tabs ask at once: both are answered, one after the other, and one says it waits."""
    tabs = [context.new_page(), context.new_page()]
    for tab in tabs:
        tab.goto(f"{url}/chat")
        tab.get_by_placeholder("Ask a question about your documents").wait_for(timeout=60_000)
    for tab, question in zip(tabs, TWO_QUESTIONS, strict=True):
        box = tab.get_by_placeholder("Ask a question about your documents")
        box.fill(question)
    for tab in tabs:
        tab.get_by_placeholder("Ask a question about your documents").press("Enter")
    saw_waiting = False
    deadline = time.monotonic() + 240
    done = [False, False]
    while not all(done) and time.monotonic() < deadline:
        for i, tab in enumerate(tabs):
            saw_waiting |= tab.get_by_text("Waiting for the model").count() > 0
            done[i] = tab.get_by_text("Why this answer").count() > 0
        time.sleep(0.1)
    for i, tab in enumerate(tabs):
        if all(done):
            wait_idle(tab)
        tab.screenshot(path=str(ARTIFACTS / f"browser-tab-{i + 1}.png"), full_page=True)
    assert all(done), "both tabs get their answer"
    assert saw_waiting, "the second tab says it is waiting for the model"
    for tab, question in zip(tabs, TWO_QUESTIONS, strict=True):
        messages = tab.locator('[data-testid="stChatMessage"]').all_inner_texts()
        assert question in messages[0] and "Why this answer" in messages[1], messages
        assert len(messages[1].split("Why this answer")[0].strip()) > 20, messages


def _stored_turns(home: Path) -> list[Any]:
    from kb_assistant.vectorstore.conversations import ConversationStore

    store = ConversationStore(home / "chats.sqlite")
    try:
        return [t for s in store.conversations() for t in store.turns(s.session_id)]
    finally:
        store.close()


GRAPH_DOCS = {
    "zanzibar.md": "# Zanzibar Foundation\n\nMira Okafor founded the Zanzibar Foundation in "
    "Lisbon. The Zanzibar Foundation funds libraries in Lisbon.\n",
    "wudang.md": "# 武当山\n\n张三丰在湖北省的武当山创立了武当派。武当派以太极拳闻名。\n",
}
NEIGHBOUR = "武当派"  # a neighbour of 张三丰 in the graph: its node is the one clicked


def test_graph_page_search_click_a_node_and_open_a_passage(kb_home: Path) -> None:
    """The Graph page in a real browser: its counts, a Chinese search, a click on a
    neighbour's node in the chart (it becomes the selected entity), one of its passages
    opened as a source card; nothing is fetched off this machine."""
    stats, neighbour, passages = _graph_kb(kb_home)
    ARTIFACTS.mkdir(exist_ok=True)
    with serve_app(kb_home) as server, chromium() as browser:
        requests = RequestLog()
        context = browser.new_context(viewport={"width": 1280, "height": 1800})
        context.on("request", requests.record)
        page = context.new_page()
        page.goto(server.url)
        page.get_by_text("Documents in default").wait_for(timeout=60_000)
        page.get_by_role("link", name="Graph").click()
        search = page.get_by_label("Find an entity (name or alias)")
        search.wait_for(timeout=60_000)
        wait_idle(page)
        metrics = dict(
            text.split("\n", 1)
            for text in page.locator('[data-testid="stMetric"]').all_inner_texts()
        )
        assert metrics.get("Entities", "").strip() == str(stats.entities), metrics
        assert metrics.get("Relations", "").strip() == str(stats.relations), metrics
        assert metrics.get("Passages in the graph", "").strip() == "2 / 2", metrics
        search.fill("张三丰")
        search.press("Enter")
        page.get_by_role("heading", name="张三丰").wait_for(timeout=30_000)
        wait_idle(page)
        chart = page.locator('[data-testid="stVegaLiteChart"] svg')
        _click_node(page, chart, NEIGHBOUR)
        page.get_by_role("heading", name=NEIGHBOUR).wait_for(timeout=30_000)
        wait_idle(page)
        assert page.get_by_role("heading", name="张三丰").count() == 0
        n, degree = len(passages), neighbour.degree
        page.get_by_role("heading", name=f"Relations ({degree})").wait_for()
        page.get_by_role("heading", name=f"Passages that mention it ({n})").wait_for()
        page.get_by_text(f"in {n} passage(s) · {degree} relation(s)").wait_for()
        # The chart is drawn around it now: its node outlined, a line for each of its relations.
        node = chart.locator(f'path[aria-label$="Name: {NEIGHBOUR}"]')
        assert node.get_attribute("stroke") == "#111111", node.get_attribute("stroke")
        assert chart.locator(f'line[aria-label*="{NEIGHBOUR}"]').count() == degree
        opener = page.locator(f".st-key-graph-open-{passages[0]} button")  # its first passage
        assert opener.inner_text().endswith("Open"), opener.inner_text()
        opener.click()
        card = page.locator('[data-testid="stExpander"]').filter(has_text="[1] wudang.md")
        card.wait_for(timeout=30_000)
        wait_idle(page)
        assert "武当派以太极拳闻名" in card.inner_text(), card.inner_text()
        assert opener.inner_text().endswith("Close"), opener.inner_text()
        page.screenshot(path=str(ARTIFACTS / "graph-page.png"), full_page=True)
        assert requests.off_machine() == [], requests.off_machine()
        context.close()


def _graph_kb(home: Path) -> tuple[GraphStats, Entity, list[int]]:
    """Ingest ``GRAPH_DOCS`` and build their graph (fast mode): the graph's counts, the entity
    ``NEIGHBOUR`` and the passages that mention it."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    paths = [home.parent / name for name in GRAPH_DOCS]
    for path in paths:
        path.write_text(GRAPH_DOCS[path.name], encoding="utf-8")
    assistant = build_assistant(load_settings(home))
    try:
        assistant.ingest(paths)
        assistant.graph_builder(mode="fast").build()
        store = assistant.graph()
        stats = store.stats()
        neighbour = next(e for e in store.search(NEIGHBOUR, limit=5) if e.name == NEIGHBOUR)
        passages = store.mention_chunks([neighbour.entity_id]).get(neighbour.entity_id, [])
    finally:
        assistant.close()
    assert stats.entities > 0 and neighbour.degree > 0 and passages, (stats, neighbour)
    return stats, neighbour, list(passages)


def _click_node(page: Any, chart: Any, name: str) -> None:
    """Click the node of entity ``name`` at its centre. Streamlit draws a chart this small as
    SVG (canvas only past 2,000 data points): each node is a ``<path>`` whose aria-label
    Vega writes from the node's fields (``...; Name: 武当派``), which finds it."""
    node = chart.locator(f'path[aria-label$="Name: {name}"]')
    node.wait_for(timeout=30_000)
    box = node.bounding_box()
    assert box is not None, f"the node of {name} is not drawn"
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
