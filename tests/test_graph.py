"""The knowledge graph: extraction (scripted, NLP, the real tiny model under its grammar),
storage and entity resolution, incremental updates, resume after SIGKILL, retrieval through
the graph, ``kb check`` and the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
from click.testing import CliRunner

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.chains.graph_extract import (
    ModelExtractor,
    complete_json,
    extraction_schema,
    grounded,
)
from kb_assistant.cli import main
from kb_assistant.models.chat import ScriptedChatModel
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings, load_settings
from kb_assistant.vectorstore.graph import GraphStore

FOUNDATION = (
    "# Zanzibar Foundation\n\nThe Zanzibar Foundation (ZF) funds the Quillon compiler. "
    "Mira Okafor chairs the Zanzibar Foundation.\n"
)
COMPILER = (
    "# Quillon\n\nThe Quillon compiler turns Ember programs into WebAssembly. "
    "Tomas Brandt is the release manager of Quillon.\n"
)
SURNAMES = ("Okafor", "Brandt", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Novak",
            "Sorensen", "Ibarra")  # fmt: skip
WUDANG = "# 武当派\n\n张三丰在湖北省的武当山创立了武当派。武当派以太极拳闻名。\n"


def _reply(entities: list[tuple[str, str]], relations: list[tuple[str, str, str]]) -> str:
    return json.dumps({
        "entities": [{"name": n, "type": t, "description": f"about {n}"} for n, t in entities],
        "relations": [
            {"source": s, "target": o, "relation": r, "description": r, "strength": 8}
            for s, o, r in relations
        ],
    }, ensure_ascii=False)  # fmt: skip


SCRIPT = [
    _reply(
        [("Zanzibar Foundation", "organization"), ("ZF", "organization"),
         ("Quillon", "software"), ("Mira Okafor", "person"),
         ("Zanzibar Stiftung", "organization")],  # not in the passage: dropped
        [("Zanzibar Foundation", "Quillon", "funds"),
         ("Mira Okafor", "Zanzibar Foundation", "chairs"),
         ("Zanzibar Stiftung", "Quillon", "owns")],
    ),
    _reply(
        [("quillon", "software"), ("Tomas Brandt", "person"), ("WebAssembly", "concept")],
        [("Tomas Brandt", "quillon", "manages releases of"),
         ("quillon", "WebAssembly", "compiles to")],
    ),
    _reply(
        [("张三丰", "person"), ("武当派", "organization"), ("武当山", "place"),
         ("Zhang Sanfeng", "person")],  # a translation, not in the passage: dropped
        [("张三丰", "武当派", "创立"), ("武当派", "武当山", "位于")],
    ),
]  # fmt: skip


def _files(folder: Path) -> list[Path]:
    paths = []
    for name, text in (("a.md", FOUNDATION), ("b.md", COMPILER), ("c.md", WUDANG)):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def _scripted(settings: Settings, *replies: str) -> tuple[Assistant, ScriptedChatModel]:
    model = ScriptedChatModel(responses=list(replies))
    return build_assistant(settings, embeddings=HashEmbedder(), chat_model=model), model


def _names(assistant: Assistant) -> set[str]:
    return {name for _, name, _ in assistant.graph().all_entities()}


def test_scripted_extraction_gives_the_exact_graph(settings: Settings, tmp_path: Path) -> None:
    """Mentions resolve by normalised name and acronym, ungrounded names are dropped, and
    relations keep the chunks that state them; Chinese names stay Chinese."""
    summary = json.dumps({"title": "Quillon", "summary": "A compiler and its funders."})
    assistant, model = _scripted(settings, *SCRIPT, summary, summary, summary)
    assistant.ingest(_files(tmp_path))
    report = assistant.graph_builder(mode="llm").build()
    assert report.extracted == 3 and report.failures == 0 and not report.stopped
    assert _names(assistant) == {
        "Zanzibar Foundation", "Quillon", "Mira Okafor", "Tomas Brandt", "WebAssembly",
        "张三丰", "武当派", "武当山",
    }  # fmt: skip
    store = assistant.graph()
    [foundation] = store.search("zf")  # the acronym is an alias of the foundation
    assert foundation.name == "Zanzibar Foundation" and foundation.type == "organization"
    [quillon] = store.search("Quillon")
    assert quillon.mentions == 2 and "quillon" in quillon.aliases
    labels = {r.label() for r in store.relations([quillon.entity_id])}
    assert labels == {
        "Zanzibar Foundation —funds→ Quillon", "Tomas Brandt —manages releases of→ Quillon",
        "Quillon —compiles to→ WebAssembly",
    }  # fmt: skip
    [wudang] = store.search("武当派")
    assert {r.label() for r in store.relations([wudang.entity_id])} == {
        "张三丰 —创立→ 武当派", "武当派 —位于→ 武当山",
    }  # fmt: skip
    system = model.calls[0][0].content
    assert "knowledge graph" in str(system) and "never translate" in str(system)
    assert "知识图谱" in str(model.calls[2][0].content)  # the Chinese passage, Chinese prompt
    assert store.problems() == [] and report.stats is not None
    assert report.stats.chunks_done == report.stats.chunks_total == 3
    assistant.close()


def test_a_failed_reply_is_tried_again_by_the_next_build(
    settings: Settings, tmp_path: Path
) -> None:
    """A reply that does not parse is neither stored nor cached: the chunk stays pending."""
    assistant, _ = _scripted(settings, "this is not JSON", SCRIPT[0])
    assistant.ingest([_files(tmp_path)[0]])
    first = assistant.graph_builder(mode="llm").build()
    assert first.failures == 1 and first.extracted == 0
    assert assistant.graph_builder(mode="llm").plan().pending == 1
    second = assistant.graph_builder(mode="llm").build()
    assert second.failures == 0 and second.extracted == 1 and "ZF" not in _names(assistant)
    assistant.close()


def test_an_acronym_seen_first_joins_its_long_name_later(
    settings: Settings, tmp_path: Path
) -> None:
    short = _reply([("ZF", "organization")], [])
    long = _reply([("Zanzibar Foundation", "organization"), ("Quillon", "software")], [])
    assistant, _ = _scripted(settings, short, long)
    for name, text in (("a.md", "# A\n\nZF pays for it.\n"), ("b.md", FOUNDATION)):
        (tmp_path / name).write_text(text, encoding="utf-8")
        assistant.ingest([tmp_path / name])
    assistant.graph_builder(mode="llm").build()
    assert _names(assistant) == {"ZF", "Quillon"}  # one entity, named as first seen
    [foundation] = assistant.graph().search("Zanzibar Foundation")
    assert foundation.mentions == 2
    assistant.close()


def test_two_builds_at_once_are_refused(assistant: Assistant, tmp_path: Path) -> None:
    from filelock import FileLock

    from kb_assistant.errors import KBError

    assistant.ingest(_files(tmp_path))
    builder = assistant.graph_builder(mode="fast")
    with FileLock(str(builder.kb.folder / ".graph.lock")):
        try:
            builder.build()
        except KBError as exc:
            assert "already running" in str(exc)
        else:
            raise AssertionError("a second build ran")
    assert builder.build().extracted == 3


def test_the_schema_bounds_every_list_and_string() -> None:
    """The grammar can only produce replies that fit the reply budget."""
    schema = extraction_schema()
    entity = schema["properties"]["entities"]
    relation = schema["properties"]["relations"]
    assert entity["maxItems"] and relation["maxItems"]
    for item in (entity["items"], relation["items"]):
        for field in item["properties"].values():
            assert "enum" in field or "maxLength" in field or "maximum" in field
    assert grounded("Mira  OKAFOR", FOUNDATION) and not grounded("Zhang Sanfeng", WUDANG)


def test_a_reply_cut_short_is_closed_after_its_last_whole_item() -> None:
    cut = '{"entities": [{"name": "a", "type": "x"}, {"name": "b\\"}", "type": "y"}], "rel'
    assert complete_json(cut) == {
        "entities": [{"name": "a", "type": "x"}, {"name": 'b"}', "type": "y"}]
    }
    assert complete_json('{"entities": [], "relations": []}') == {"entities": [], "relations": []}
    assert complete_json('{"entities": [{"na') is None


def test_the_real_tiny_model_always_parses_under_the_grammar(kb_home: Path) -> None:
    """SmolLM2-135M writes poor graphs, but every reply parses and fits the schema, and what
    is kept is named in its passage."""
    assistant = build_assistant(load_settings(kb_home, chat_backend="llama-cpp"))
    extractor = ModelExtractor(assistant.chat_model, reply_tokens=200)  # cut short: closed
    texts = [FOUNDATION, WUDANG]
    found = extractor.extract(texts)
    assert len(found) == 2 and all(e is not None for e in found)
    for text, extraction in zip(texts, found, strict=True):
        assert extraction is not None
        assert all(grounded(e.name, text) for e in extraction.entities)
        names = {e.name for e in extraction.entities}
        assert all(r.source in names and r.target in names for r in extraction.relations)
    assistant.close()


def test_fast_mode_is_incremental_and_remove_takes_the_documents_graph(
    assistant: Assistant, tmp_path: Path
) -> None:
    paths = _files(tmp_path)
    assistant.ingest(paths)
    first = assistant.graph_builder(mode="fast").build()
    assert first.extracted == 3 and first.stats is not None
    names = _names(assistant)
    assert {"Zanzibar Foundation", "Mira Okafor", "Tomas Brandt", "张三丰", "武当山"} <= names
    assert assistant.graph_builder(mode="fast").plan().pending == 0

    assistant.remove(["b.md"])  # the only document naming Tomas Brandt
    assert "Tomas Brandt" not in _names(assistant) and "Mira Okafor" in _names(assistant)
    assert assistant.graph().problems() == [] and assistant.check_kb().ok
    stats = assistant.graph().stats()
    assert stats.chunks_done == stats.chunks_total == 2

    paths[0].write_text(FOUNDATION + "\nThe foundation also supports Orrin Vale.\n", "utf-8")
    assistant.ingest(paths)  # a.md changed; b.md back before the graph was built again
    again = assistant.graph_builder(mode="fast").build()
    assert again.extracted == 1 and again.from_cache == 1  # b.md's text: from the cache
    assert {"Tomas Brandt", "Orrin Vale"} <= _names(assistant)
    assert assistant.graph().problems() == []


_SLOW_BUILD = """
import sys, time
from kb_assistant.assistant import build_assistant
from kb_assistant.settings import load_settings
from kb_assistant.models.embeddings import HashEmbedder

assistant = build_assistant(load_settings(), embeddings=HashEmbedder())
builder = assistant.graph_builder(mode="fast")
builder.batch = 1
inner = builder.extractor

class Slow:
    method = inner.method
    def extract(self, texts):
        time.sleep(0.4)
        return inner.extract(texts)

builder.extractor = Slow()
builder.build()
print("finished", flush=True)
"""


def test_a_build_killed_mid_way_resumes_where_it_stopped(
    assistant: Assistant, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, name in enumerate(SURNAMES):
        (folder / f"d{i}.md").write_text(
            f"# Note {i}\n\nMira {name} met Tomas {name} in Lisbon.\n", encoding="utf-8"
        )
    assistant.ingest([folder])
    catalog = assistant.settings.home / "kbs" / "default" / "catalog.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            with sqlite3.connect(catalog) as db:
                done = db.execute("SELECT count(*) FROM graph_done").fetchone()[0]
        assert child.poll() is None, "the build finished before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    store = assistant.graph()
    kept = store.stats().chunks_done
    assert 3 <= kept < 10 and store.problems() == []
    resumed = assistant.graph_builder(mode="fast").build()
    assert resumed.extracted == 10 - kept and resumed.stats is not None
    assert resumed.stats.chunks_done == 10 and store.problems() == []
    # the same graph as one uninterrupted build of the same documents
    assistant.ingest([folder], kb="clean")
    assistant.graph_builder("clean", mode="fast").build()
    clean = assistant.graph("clean")
    assert _graph(store) == _graph(clean) and len(_graph(clean)[0]) >= 10


def _graph(store: GraphStore) -> tuple[set[str], set[str]]:
    names = {name for _, name, _ in store.all_entities()}
    ids = [i for i, _, _ in store.all_entities()]
    return names, {r.label() for r in store.relations(ids, limit=10_000)}


def _second_hop_corpus(folder: Path) -> None:
    folder.mkdir()
    texts = {
        "chair.md": "# Zanzibar Foundation\n\nThe Zanzibar Foundation is chaired by Mira Okafor.",
        "reports.md": "# Reports\n\nThe Zanzibar Foundation chair publishes yearly reports.",
        "meetings.md": "# Meetings\n\nThe Zanzibar Foundation chair meets the board monthly.",
        "budget.md": "# Budget\n\nThe Zanzibar Foundation budget is set by its chair.",
        "bio.md": "# Biography\n\nMira Okafor was born in Lisbon in 1971.",
    }
    for name, text in texts.items():
        (folder / name).write_text(text + "\n", encoding="utf-8")


def test_hybrid_graph_brings_in_the_passage_of_the_second_hop(
    settings: Settings, tmp_path: Path
) -> None:
    """The question names the foundation; the birthplace is in a passage that names only its
    chair. Dense and keyword search miss it; the graph follows foundation → chair."""
    _second_hop_corpus(tmp_path / "docs")
    question = "Where was the chair of the Zanzibar Foundation born?"
    plain = build_assistant(settings, embeddings=HashEmbedder())
    plain.ingest([tmp_path / "docs"])
    plain.graph_builder(mode="fast").build()
    assert "bio.md" not in [Path(h.chunk.source).name for h in plain.search(question, k=3)]
    plain.close()

    graph = build_assistant(
        load_settings(settings.home, retrieval_mode="hybrid+graph"), embeddings=HashEmbedder()
    )
    hits = graph.search(question, k=3)
    assert Path(hits[2].chunk.source).name == "bio.md"
    assert "entity: Mira Okafor" in hits[2].graph
    answer = graph.ask(question)
    assert any("Mira Okafor" in fact for fact in answer.trace["graph"])
    assert any(c.get("graph") for c in answer.trace["candidates"])
    graph.close()


def test_graph_mode_alone_and_a_global_question(settings: Settings, tmp_path: Path) -> None:
    _second_hop_corpus(tmp_path / "docs")
    assistant = build_assistant(
        load_settings(settings.home, retrieval_mode="graph"), embeddings=HashEmbedder()
    )
    (tmp_path / "docs" / "weather.md").write_text("# Weather\n\nIt rained in Oslo.\n", "utf-8")
    assistant.ingest([tmp_path / "docs"])
    before = assistant.search("Mira Okafor", k=2)  # no graph yet: dense search answers
    assert before and all(h.dense_score is not None and not h.graph for h in before)
    assistant.graph_builder(mode="fast").build()
    hits = assistant.search("Who is Mira Okafor?", k=6)
    assert {Path(h.chunk.source).name for h in hits[:2]} == {"chair.md", "bio.md"}
    assert all("entity: Mira Okafor" in h.graph for h in hits[:2])
    # the graph knows nothing of the weather: dense search fills the last place
    assert len(hits) == 6 and Path(hits[5].chunk.source).name == "weather.md"
    assert not hits[5].graph and all(h.dense_score is not None for h in hits)
    assert assistant.graph().communities()  # Zanzibar Foundation, its chair, Mira Okafor, …
    themes = assistant.search("What are the main themes of these documents?", k=3)
    assert any(f.startswith("community: ") for h in themes for f in h.graph)
    assistant.close()


def test_kb_check_finds_and_repairs_dangling_graph_rows(
    assistant: Assistant, tmp_path: Path
) -> None:
    assistant.ingest(_files(tmp_path))
    assistant.graph_builder(mode="fast").build()
    catalog = assistant.settings.home / "kbs" / "default" / "catalog.sqlite"
    db = sqlite3.connect(catalog)  # foreign keys off: as a damaged or foreign writer would
    db.execute("INSERT INTO graph_mentions (entity_id, chunk_id, name) VALUES (1, 999, 'x')")
    db.commit()
    db.close()
    report = assistant.check_kb()
    assert not report.ok
    assert any("knowledge graph: 1 mentions of missing chunks" in p for p in report.problems)
    repaired = assistant.check_kb(repair=True)
    assert repaired.ok and any("knowledge-graph" in line for line in repaired.repaired)


def test_an_older_catalog_gains_the_graph_tables(settings: Settings, tmp_path: Path) -> None:
    first = build_assistant(settings, embeddings=HashEmbedder())
    first.ingest([_files(tmp_path)[2]])
    first.close()
    db = sqlite3.connect(settings.home / "kbs" / "default" / "catalog.sqlite")
    for table in ("graph_members", "graph_communities", "graph_evidence", "graph_relations",
                  "graph_mentions", "graph_aliases", "graph_entities", "graph_done",
                  "graph_cache"):  # fmt: skip
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    reopened = build_assistant(settings, embeddings=HashEmbedder())
    assert reopened.graph_builder(mode="fast").build().extracted == 1
    assert "武当山" in _names(reopened)
    reopened.close()


def _cli(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_cli_build_stats_show_and_export(assistant: Assistant, tmp_path: Path) -> None:
    assistant.ingest(_files(tmp_path))
    plan = _cli("graph", "build", "--dry-run")
    assert plan["pending"] == 3 and plan["method"] == "fast" and plan["seconds"] >= 0
    assert _cli("graph", "stats")["entities"] == 0  # a dry run builds nothing
    built = _cli("graph", "build")
    assert built["extracted"] == 3 and built["stats"]["entities"] > 5
    stats = _cli("graph", "stats")
    assert stats["method"] == "fast" and stats["chunks_done"] == 3
    shown = _cli("graph", "show", "武当")
    assert shown["name"].startswith("武当") and shown["passages"][0]["name"] == "c.md"
    assert shown["relations"] and all(r["relation"] == "共现" for r in shown["relations"])
    missing = CliRunner().invoke(main, ["graph", "show", "Nobody Atall"])
    assert missing.exit_code == 1 and "no entity matching 'Nobody Atall'" in missing.output
    empty = CliRunner().invoke(main, ["graph", "show", " ..."])
    assert empty.exit_code == 1 and "names no entity" in empty.output
    glean = CliRunner().invoke(main, ["graph", "build", "--glean"])
    assert glean.exit_code == 1 and "--mode llm" in glean.output

    out = tmp_path / "graph.graphml"
    result = CliRunner().invoke(main, ["graph", "export", "--format", "graphml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(out)
    assert graph.number_of_nodes() == stats["entities"]
    assert "Mira Okafor" in {d["name"] for _, d in graph.nodes(data=True)}
    data = json.loads(CliRunner().invoke(main, ["graph", "export", "--format", "json"]).output)
    assert len(data["nodes"]) == stats["entities"] and len(data["links"]) == stats["relations"]


def test_dense_mode_stays_dense(settings: Settings, tmp_path: Path) -> None:
    _second_hop_corpus(tmp_path / "docs")
    assistant = build_assistant(
        load_settings(settings.home, retrieval_mode="dense"), embeddings=HashEmbedder()
    )
    assistant.ingest([tmp_path / "docs"])
    hits = assistant.search("Zanzibar Foundation chair", k=5)
    assert hits and all(h.keyword_score is None and h.dense_score is not None for h in hits)
    assistant.close()
