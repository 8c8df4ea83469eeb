"""Hybrid retrieval: fusion, near-duplicates, the keyword index (Chinese too), migration."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings, load_settings
from kb_assistant.vectorstore.hybrid import (
    drop_near_duplicates,
    is_navigation,
    reciprocal_rank_fusion,
)
from kb_assistant.vectorstore.keywords import any_of, keyword_tokens, query_terms
from kb_assistant.vectorstore.knowledge_base import SearchHit


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4, 1]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == 1 / 61 + 1 / 63
    weighted = reciprocal_rank_fusion([[1, 2], [2, 1]], [1.0, 0.5])
    assert [i for i, _ in weighted] == [1, 2]


def test_near_duplicates_keep_the_best_ranked(assistant: Assistant, tmp_path: Path) -> None:
    text = "Debian uses dpkg and apt to install packages from the archive."
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(text + " Really.", encoding="utf-8")
    (tmp_path / "c.txt").write_text("Something else about kernels entirely.", encoding="utf-8")
    assistant.ingest([tmp_path])
    hits = assistant.search("install packages with apt", k=3)
    names = [Path(h.chunk.source).name for h in hits]
    assert len([n for n in names if n in {"a.txt", "b.txt"}]) == 1
    chunk = hits[0].chunk
    same = [SearchHit(1, 0.9, chunk), SearchHit(2, 0.8, chunk)]
    assert drop_near_duplicates(same, 0.8) == same[:1]


def test_chinese_is_segmented_for_keyword_search() -> None:
    assert {"数据", "备份"} <= set(keyword_tokens("数据备份怎么做？"))
    assert query_terms("的 了 是") == []  # only stopwords: nothing to match
    assert any_of(query_terms('a "quoted" word')) == '"quoted" OR "word"'


def test_keyword_ranking_finds_an_exact_term_dense_misses(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "codes.txt").write_text("Error E4021 means the disk quota was exceeded.", "utf-8")
    for i in range(30):
        (tmp_path / f"noise{i}.txt").write_text(f"General advice number {i} about errors.", "utf-8")
    keyword = build_assistant(
        load_settings(settings.home, retrieval_mode="keyword"), embeddings=HashEmbedder()
    )
    keyword.ingest([tmp_path])
    top = keyword.search("what does E4021 mean", k=3)
    assert Path(top[0].chunk.source).name == "codes.txt"
    assert top[0].keyword_score is not None and top[0].dense_score is None
    hybrid = build_assistant(settings, embeddings=HashEmbedder())
    best = hybrid.search("what does E4021 mean", k=3)[0]
    assert Path(best.chunk.source).name == "codes.txt"
    assert best.keyword_score is not None and best.dense_score is not None


def test_chinese_documents_are_found_by_chinese_questions(
    assistant: Assistant, tmp_path: Path
) -> None:
    (tmp_path / "备份.md").write_text(
        "# 数据备份\n\n每天晚上用 rsync 备份家目录。", encoding="utf-8"
    )
    (tmp_path / "网络.md").write_text("# 网络\n\n编辑配置文件来设置网卡。", encoding="utf-8")
    assistant.ingest([tmp_path])
    assert Path(assistant.search("怎么备份数据？", k=1)[0].chunk.source).name == "备份.md"


def test_removed_documents_leave_the_keyword_index(assistant: Assistant, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("zanzibar quokka", encoding="utf-8")
    assistant.ingest([tmp_path / "x.txt"])
    assistant.remove(["x.txt"])
    db = sqlite3.connect(assistant.knowledge_base().folder / "catalog.sqlite")
    assert db.execute("SELECT count(*) FROM chunks_fts").fetchone()[0] == 0


def test_schema_1_catalog_gets_its_keyword_index(settings: Settings, tmp_path: Path) -> None:
    _older_catalog(settings, tmp_path, 1, "DROP TABLE chunks_fts")
    reopened = build_assistant(
        load_settings(settings.home, retrieval_mode="keyword"), embeddings=HashEmbedder()
    )
    assert Path(reopened.search("quokkas", k=1)[0].chunk.source).name == "a.txt"


def test_a_configured_reranker_reorders_the_results(settings: Settings, tmp_path: Path) -> None:
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / f"{name}.txt").write_text(f"{name} packages install notes", encoding="utf-8")
    seen: list[tuple[str, int]] = []

    def prefers_gamma(query: str, passages: Sequence[str]) -> list[float]:
        seen.append((query, len(passages)))
        return [1.0 if p.startswith("gamma") else 0.0 for p in passages]

    reranked = Assistant(settings, embeddings=HashEmbedder(), reranker=prefers_gamma)
    reranked.ingest([tmp_path])
    hits = reranked.search("alpha packages", k=2)
    assert Path(hits[0].chunk.source).name == "gamma.txt" and hits[0].score == 1.0
    assert seen == [("alpha packages", 3)] and len(hits) == 2


def test_a_missing_reranker_model_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    import pytest

    from kb_assistant.errors import ModelError

    configured = build_assistant(
        load_settings(settings.home, reranker_model=tmp_path / "nope"), embeddings=HashEmbedder()
    )
    configured.create_kb("default")
    with pytest.raises(ModelError, match=r"reranker model .* not found"):
        configured.search("anything")


# the opening of a chapter of the Debian FAQ (its table of contents), in English and Chinese
FAQ_CONTENTS = """Table of Contents

6.1. How many Debian distributions are there?

6.2. What are all those names like etch, lenny, etc.?

6.2.1. Which other codenames have been used in the past?

6.2.2. Where do these codenames come from?

6.3. What about "sid"?"""
FAQ_CONTENTS_ZH = """目录

6.1. Debian 有多少个发行版？

6.2. etch、lenny 这些名字是什么意思？

6.2.1. 过去还用过哪些代号？

6.2.2. 这些代号是从哪里来的？"""


def test_tables_of_contents_are_navigation_and_procedures_are_not() -> None:
    assert is_navigation(FAQ_CONTENTS) and is_navigation(FAQ_CONTENTS_ZH)
    assert is_navigation("第 1 章 概述\n第 2 章 安装\n第 3 章 配置\n第 4 章 备份")
    steps = "To upgrade:\n1. Back up /etc.\n2. Edit sources.list.\n3. Run apt update.\n4. Reboot."
    assert not is_navigation(steps)
    assert not is_navigation("6.2.2. Where do these codenames come from?\n\nFrom Toy Story.")


def test_a_table_of_contents_ranks_below_the_section_it_lists(
    assistant: Assistant, tmp_path: Path
) -> None:
    (tmp_path / "contents.txt").write_text(FAQ_CONTENTS, encoding="utf-8")
    (tmp_path / "codenames.txt").write_text(
        "Debian codenames are characters of the Toy Story films.",
        encoding="utf-8",
    )
    assistant.ingest([tmp_path])
    hits = assistant.search("Where do these codenames come from?", k=2)
    assert [Path(h.chunk.source).name for h in hits] == ["codenames.txt", "contents.txt"]


def test_schema_2_catalog_gains_the_layout_columns(settings: Settings, tmp_path: Path) -> None:
    _older_catalog(
        settings, tmp_path, 2, "ALTER TABLE chunks DROP COLUMN boxes",
        "ALTER TABLE chunks DROP COLUMN ocr",
    )  # fmt: skip
    reopened = build_assistant(settings, embeddings=HashEmbedder())
    [hit] = reopened.search("quokkas", k=1)
    assert hit.chunk.boxes == () and hit.chunk.ocr is None
    reopened.close()
    db = sqlite3.connect(settings.home / "kbs" / "default" / "catalog.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)


def _older_catalog(settings: Settings, tmp_path: Path, schema: int, *undo: str) -> None:
    """A knowledge base of one document whose catalog is taken back to ``schema``."""
    first = build_assistant(settings, embeddings=HashEmbedder())
    (tmp_path / "a.txt").write_text("quokkas live on Rottnest island", encoding="utf-8")
    first.ingest([tmp_path / "a.txt"])
    first.close()
    db = sqlite3.connect(settings.home / "kbs" / "default" / "catalog.sqlite")
    for statement in undo:
        db.execute(statement)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(schema),))
    db.commit()
    db.close()
