"""Every answer sentence is checked against the passages behind it: key terms must be there,
and the meaning close; unsupported sentences are marked, never dropped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from kb_assistant.assistant import Assistant
from kb_assistant.chains.support import check_numbers, check_sentences, key_terms
from kb_assistant.models.chat import ScriptedChatModel
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.ui.render import marked_answer

PASSAGES = {
    1: "Run apt-get update to refresh the package lists, then apt-get upgrade to install the "
    "newer versions. The list of mirrors is kept in /etc/apt/sources.list.",
    2: "Debian 12 (bookworm) was released in June 2023 with Linux 6.1.",
}


def test_key_terms_are_numbers_and_identifiers() -> None:
    assert key_terms("Edit /etc/apt/sources.list and run apt-get update [1].") == [
        "/etc/apt/sources.list", "apt-get",
    ]  # fmt: skip
    # Plain capitalised words are not terms: titles and headings would flag correct answers.
    assert key_terms("Debian 12 was released in 2023 by Ian Murdock.") == ["12", "2023"]
    # List numbers, Markdown and placeholders a model invents for an example are not either.
    assert key_terms("2. **List Diversions**: run `dpkg-divert --list`.") == ["dpkg-divert"]
    assert key_terms("For example: alien -i example.rpm") == []
    # Latin words inside a Chinese sentence are names or commands.
    assert key_terms("使用 aptitude 或 dpkg 安装软件包。") == ["aptitude", "dpkg"]
    assert key_terms("It is simple.") == []
    # A Latin word ends where Chinese starts; hyphenated prose and abbreviations are no names.
    assert key_terms("要让 Debian系统中的软件保持最新，用 apt-mark hold。") == [
        "Debian", "apt-mark", "hold",
    ]  # fmt: skip
    assert key_terms("A step-by-step, up-to-date guide (e.g. with file-rc), i.e. short.") == [
        "file-rc"
    ]


def test_terms_are_compared_as_numbers_or_without_punctuation() -> None:
    from kb_assistant.chains.support import _contains

    assert _contains("Mount the cdrom drive.", "CD-ROM")
    assert _contains("Debian includes more than 59100 packages.", "59,100")
    assert not _contains("Debian includes more than 59100 packages.", "58,100")
    assert not _contains("Debian 12 (bookworm)", "2")


def test_a_sentence_naming_what_no_passage_says_is_unsupported() -> None:
    embed = HashEmbedder(dimension=512).embed_array
    answer = (
        "Run apt-get update, then apt-get upgrade [1]. "
        "Debian 12 was released in June 2023 [2]. "
        "Debian 13 was released in 2025 with Linux 6.12 [2]. "
        "You can also use synaptic-gtk for this."
    )
    checks = check_sentences(answer, PASSAGES, embed, min_cosine=0.2)
    assert [c.supported for c in checks] == [True, True, False, False]
    assert checks[2].passages == [2] and checks[2].missing == ["13", "2025", "6.12"]
    assert checks[3].missing == ["synaptic-gtk"] and checks[3].passages == [1, 2]
    # Without an embedder only the key terms decide.
    assert [c.supported for c in check_sentences(answer, PASSAGES, None, min_cosine=0.9)] == [
        True, True, False, False,
    ]  # fmt: skip


def test_a_sentence_far_from_its_passage_is_unsupported_even_without_key_terms() -> None:
    def embed(texts: Sequence[str]) -> np.ndarray:  # sentence 0 is orthogonal to everything
        vectors = np.zeros((len(texts), 3), dtype=np.float32)
        vectors[0, 0] = 1.0
        vectors[1:, 1] = 1.0
        return vectors

    checks = check_sentences("Cats sleep most of the day [1].", PASSAGES, embed, min_cosine=0.5)
    assert [(c.supported, c.similarity) for c in checks] == [(False, 0.0)]


def test_marked_answer_dims_unsupported_sentences_and_keeps_them() -> None:
    answer = "Use apt [1]. Debian 13 came out in 2025. Done."
    shown = marked_answer(answer, ["Debian 13 came out in 2025."], "not found in the sources")
    assert shown.startswith("Use apt \\[1\\]\\. :gray[Debian 13 came out in 2025\\.]")
    assert ":orange[*(not found in the sources)*]" in shown and shown.endswith("Done\\.")


@pytest.mark.parametrize("scripted", ["Run apt-get upgrade to get Debian 14 [1]."])
def test_ask_marks_the_unsupported_sentence_in_json(
    assistant: Assistant, tmp_path: Path, scripted: str
) -> None:
    doc = tmp_path / "apt.md"
    doc.write_text("# Upgrading\n\nRun apt-get update, then apt-get upgrade, to upgrade.\n")
    assistant.ingest([doc])
    assistant._chat_model = ScriptedChatModel(responses=[scripted])
    answer = assistant.ask("How do I upgrade with apt-get?")
    data = answer.to_json()
    assert [s["supported"] for s in data["sentences"]] == [False]
    assert data["sentences"][0]["missing"] == ["14"]
    assert answer.unsupported[0].text == scripted
    assert answer.trace["passages"] and answer.trace["passages"][0]["n"] == 1


def test_the_passages_are_known_before_the_model_reads_them(
    assistant: Assistant, tmp_path: Path
) -> None:
    doc = tmp_path / "apt.md"
    doc.write_text("# Upgrading\n\nRun apt-get update, then apt-get upgrade, to upgrade.\n")
    assistant.ingest([doc])
    assistant._chat_model = ScriptedChatModel(responses=["Run apt-get upgrade [1]."])
    events: list[str] = []
    answer = assistant.ask(
        "How do I upgrade with apt-get?",
        on_passages=lambda cited: events.append("passages:" + ",".join(c.name for c in cited)),
        on_token=lambda piece: events.append("token"),
    )
    assert events[0] == "passages:apt.md" and "token" in events[1:]
    assert [c.name for c in answer.passages] == ["apt.md"]


def test_a_question_in_another_language_than_its_passage_has_its_own_threshold(
    assistant: Assistant, tmp_path: Path
) -> None:
    from kb_assistant.chains.rag import RagChain, RagParams

    doc = tmp_path / "备份.md"
    doc.write_text("# 数据备份\n\n每天晚上用 rsync 把家目录备份到外置硬盘。\n", encoding="utf-8")
    assistant.ingest([doc])

    def chain(cross: float | None, *replies: str) -> tuple[RagChain, ScriptedChatModel]:
        params = RagParams(min_dense=0.99, min_dense_cross=cross, min_coverage=1.01)
        model = ScriptedChatModel(responses=list(replies))
        return RagChain(lambda q, k: assistant.search(q, k=k), model, params), model

    question = "How do I back up my home folder?"
    assert chain(None)[0].answer(question).refused  # the same-language threshold refuses it
    # Let in by the cross-language threshold only: the model is first asked (in English)
    # whether the passages answer the question, with the answer's own prompt before it.
    rag, model = chain(-1.0, "Yes.", "用 rsync 备份 [1]。")
    answered = rag.answer(question)
    assert not answered.refused and answered.trace["evidence"]["min_dense"] == -1.0
    assert answered.answer == "用 rsync 备份 [1]。"
    asked, answering = model.calls
    assert asked[0].content == answering[0].content  # the same system prompt and passages
    assert str(asked[-1].content).startswith("Do the sources above contain the answer")
    assert answered.trace["relevance"]["answers"] is True
    # When the model says no, the answer is withheld and the passages it read are listed.
    rag, model = chain(-1.0, "no", "never streamed")
    refused = rag.answer(question)
    assert refused.refused and len(model.calls) == 1
    assert [c.name for c in refused.passages] == ["备份.md"] and refused.citations == []
    assert "no answer in the passages" in refused.trace["refused_because"]
    assert [p["name"] for p in refused.trace["passages"]] == ["备份.md"]  # the app shows them
    # A Chinese question over the Chinese passage keeps the same-language threshold.
    same = chain(-1.0, "用 rsync 备份 [1]。")[0].answer("怎么备份家目录？")
    assert same.trace["evidence"]["min_dense"] == 0.99 and "relevance" not in same.trace


def test_numbers_in_an_agent_answer_are_checked_against_the_rows() -> None:
    rows = [5.651941747572825, "2009", 1297, "Rock"]
    checks = check_numbers(
        "The average is 5.65 and the best year 2009. Rock has 1,297 tracks, 15 more than Jazz. "
        "摇滚（Rock）共有 1297 首，排名第 1。",
        rows,
        "Which genre has the most tracks? Show the top 1.",
    )
    assert [c.supported for c in checks] == [True, False, True]
    assert checks[1].missing == ["15"]  # 5.65 rounds 5.6519…; 1,297 is 1297; 1 is the question's
