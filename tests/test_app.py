"""The Streamlit page through AppTest, over the real core with the fake embedder."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from assistant import build_assistant
from models.embeddings import HashEmbedder
from settings import load_settings

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def page(kb_home: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    return at


def seed(kb_home: Path, tmp_path: Path) -> None:
    a = build_assistant(load_settings(kb_home), embeddings=HashEmbedder())
    (tmp_path / "network.md").write_text(
        "# Network\n\nifupdown configures interfaces.", encoding="utf-8"
    )
    (tmp_path / "apt.txt").write_text("apt installs packages.", encoding="utf-8")
    a.ingest([tmp_path])
    a.close()


def test_empty_home_shows_the_default_knowledge_base(page: AppTest) -> None:
    assert not page.exception
    assert page.title[0].value == "Knowledge base: default"
    assert any("empty" in i.value for i in page.info)


def test_create_knowledge_base_from_the_sidebar(page: AppTest, kb_home: Path) -> None:
    page.sidebar.text_input[0].input("项目资料")
    page.sidebar.button[0].click().run()
    assert not page.exception
    assert (kb_home / "kbs" / "项目资料" / "manifest.json").is_file()
    assert page.title[0].value == "Knowledge base: 项目资料"


def test_documents_are_listed_and_can_be_deleted(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path)
    at = AppTest.from_file(APP, default_timeout=30).run()
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["apt.txt", "network.md"]
    at.multiselect[0].select(at.multiselect[0].options[0]).run()
    at.button[0].click().run()
    assert not at.exception
    remaining = build_assistant(load_settings(kb_home), embeddings=HashEmbedder()).documents()
    assert len(remaining) == 1


def test_search_shows_sources_as_text(kb_home: Path, tmp_path: Path) -> None:
    seed(kb_home, tmp_path)
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.text_input[0].input("network interfaces").run()
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert captions and captions[0].startswith("[1] network.md")
    assert any("ifupdown configures interfaces." in t.value for t in at.text)
