"""The splitter: Chinese-aware sentence cuts and token-bounded, overlapping chunks."""

from __future__ import annotations

import itertools

import pytest

from kb_assistant.loaders.splitter import ChunkSplitter, normalise_text, split_sentences
from kb_assistant.models.embeddings import HFTokenCounter, RegexTokenCounter, resolve_model


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    return HFTokenCounter(resolve_model("all-MiniLM-L6-v2").path / "tokenizer.json")


def test_chinese_and_english_sentence_ends_cut() -> None:
    text = "第一句。第二句！“第三句？”他说。Then English. Done"
    assert split_sentences(text) == [
        "第一句。",
        "第二句！",
        "“第三句？”",
        "他说。",
        "Then English.",
        " Done",
    ]
    assert "".join(split_sentences(text)) == text


def test_counter_ignores_the_truncation_in_tokenizer_json(counter: HFTokenCounter) -> None:
    assert counter.count(["word " * 300]) == [300]


def test_chunks_respect_the_token_budget_and_overlap(counter: HFTokenCounter) -> None:
    sentences = [f"Sentence number {i} talks about package {i} in detail." for i in range(200)]
    splitter = ChunkSplitter(counter, chunk_tokens=64, overlap_tokens=16)
    chunks = list(splitter.split_text(" ".join(sentences)))
    assert len(chunks) > 10
    for (text, tokens), (following, _) in itertools.pairwise(chunks):
        assert tokens <= 64
        assert counter.count([text])[0] <= 64
        last_sentence = text.rsplit(". ", 1)[-1]
        assert following.startswith(last_sentence)  # overlap carries the last sentence over
    assert "Sentence number 199" in chunks[-1][0]


def test_chinese_text_chunks_end_on_chinese_punctuation(counter: HFTokenCounter) -> None:
    text = "".join(f"这是第{i}个句子，它讲的是知识库。" for i in range(100))
    chunks = list(ChunkSplitter(counter, chunk_tokens=40, overlap_tokens=0).split_text(text))
    assert len(chunks) > 5
    assert all(chunk.endswith("。") for chunk, _ in chunks)
    assert "".join(chunk for chunk, _ in chunks) == text  # nothing lost, nothing repeated


def test_a_sentence_longer_than_a_chunk_is_cut_at_tokens(counter: HFTokenCounter) -> None:
    text = "x" * 5 + " word" * 500
    chunks = list(ChunkSplitter(counter, chunk_tokens=100, overlap_tokens=10).split_text(text))
    assert len(chunks) >= 5
    assert all(tokens <= 100 for _, tokens in chunks)


def test_dot_leaders_and_blank_runs_collapse() -> None:
    assert normalise_text("1.2 Setup . . . . . . . . 14\n\n\n\nNext") == "1.2 Setup … 14\n\nNext"


def test_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(ValueError, match="smaller"):
        ChunkSplitter(RegexTokenCounter(), chunk_tokens=10, overlap_tokens=10)


def test_a_markdown_table_is_cut_between_rows_with_its_header_in_every_chunk() -> None:
    rows = [f"| item {i} | {i * 7} |" for i in range(60)]
    table = "\n".join(["| Name | Units |", "| --- | --- |", *rows])
    chunks = list(ChunkSplitter(RegexTokenCounter(), 60, 10).split_table(table))
    assert len(chunks) > 2
    for text, tokens in chunks:
        assert text.startswith("| Name | Units |\n| --- | --- |\n| item")
        assert tokens <= 60
    body = [line for text, _ in chunks for line in text.split("\n")[2:]]
    assert body == rows  # every row once, in order


def test_chunks_keep_the_boxes_of_the_lines_they_were_cut_from() -> None:
    from kb_assistant.loaders.base import Section

    lines = tuple(
        (f"Sentence number {i} is here.", 0.1, 0.05 * i, 0.9, 0.05 * i + 0.04) for i in range(12)
    )
    section = Section("\n".join(line[0] for line in lines), page=3, lines=lines)
    chunks = list(ChunkSplitter(RegexTokenCounter(), 20, 0).split_sections(iter([section])))
    assert len(chunks) > 2
    seen: list[tuple[float, ...]] = []
    for chunk in chunks:
        expected = tuple(line[1:] for line in lines if line[0] in chunk.text)
        assert chunk.boxes == expected and chunk.page == 3
        seen += chunk.boxes
    assert len(set(seen)) == 12
    table = Section("| a | b |\n| --- | --- |\n| 1 | 2 |", lines=(("t", 0.1, 0.2, 0.8, 0.4),))
    [chunk] = ChunkSplitter(RegexTokenCounter(), 20, 0).split_sections(iter([table]))
    assert chunk.boxes == ((0.1, 0.2, 0.8, 0.4),)


def test_a_table_whose_header_fills_a_chunk_is_cut_as_text_and_loses_nothing() -> None:
    header = "| " + " | ".join(f"column name number {i}" for i in range(8)) + " |"
    table = "\n".join([header, "|" + " --- |" * 8, "| " + " | ".join("1" * 8) + " |"])
    chunks = [text for text, _ in ChunkSplitter(RegexTokenCounter(), 20, 0).split_table(table)]
    assert "column name number 0" in chunks[0] and "column name number 7" in "".join(chunks)
