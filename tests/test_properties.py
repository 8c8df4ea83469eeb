"""Property-based tests (hardening item 10): loaders fed random and mutated bytes, and the
splitter fed hostile text.

Loaders run through the product's worker (``loaders.sandbox``), so a hang or a memory blow-up
shows as ``ParserStopped``, which these tests count as a failure: a damaged file must fail
with a documented error, quickly, and nothing else.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_assistant.errors import IngestError, ParserStopped
from kb_assistant.loaders import Section, loader_of
from kb_assistant.loaders.base import LoadContext
from kb_assistant.loaders.sandbox import POOL, ParseLimits
from kb_assistant.loaders.splitter import ChunkSplitter, normalise_text
from kb_assistant.models.embeddings import HFTokenCounter, resolve_model
from tests.files import make_docx, make_pdf, make_pptx, make_xlsx

LIMITS = ParseLimits(timeout=20, cpu_seconds=20, memory_mb=2048)


def seeds(folder: Path) -> dict[str, bytes]:
    """One small valid file per format, to mutate."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        ".pdf": make_pdf(folder / "s.pdf", ["Hello PDF world.", "Page two."]),
        ".docx": make_docx(folder / "s.docx", [("h1", "Title"), ("p", "Body text.")]),
        ".xlsx": make_xlsx(folder / "s.xlsx", {"S": [["a", "b"], [1, 2]]}),
        ".pptx": make_pptx(folder / "s.pptx", [("Slide", "Body")]),
    }
    data = {ext: path.read_bytes() for ext, path in made.items()}
    data[".html"] = (
        b"<html><head><title>t</title></head><body><h1>A</h1><p>B &amp; c</p></body></html>"
    )
    data[".md"] = "# 标题\n\nSome *markdown* 中文。\n\n## Two\n\ntext".encode()
    data[".txt"] = "plain text, 中文, emoji 😀, עברית".encode()
    data[".csv"] = b"a,b,c\n1,2,3\n4,5,\xff\n"
    return data


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return seeds(tmp_path_factory.mktemp("seeds"))


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip a byte, cut the tail, insert a byte."""
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        at = position % len(out)
        if kind == 0:
            out[at] ^= value or 1
        elif kind == 1:
            del out[at:]
        else:
            out.insert(at, value)
    return bytes(out)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8
)


def parse(path: Path) -> list[Section]:
    fmt, loader = loader_of(path)
    with POOL.worker(LIMITS) as sections:
        return list(sections(path, fmt, loader, LoadContext(max_rows=1000)))


def only_documented_errors(path: Path) -> None:
    try:
        parse(path)
    except ParserStopped as exc:  # a hang or a memory blow-up: a bug to fix, not a result
        raise AssertionError(f"{path.name}: {exc}") from exc
    except IngestError:
        pass


FORMATS = [".pdf", ".docx", ".xlsx", ".pptx", ".html", ".md", ".txt", ".csv"]
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("ext", FORMATS)
@PROPERTY
@given(edits=EDITS)
def test_mutated_files_fail_only_with_documented_errors(
    seed_files: dict[str, bytes], tmp_path: Path, ext: str, edits: list[tuple[int, int, int]]
) -> None:
    path = tmp_path / f"mutated{ext}"
    path.write_bytes(mutate(seed_files[ext], edits))
    only_documented_errors(path)


@pytest.mark.parametrize("ext", FORMATS)
@PROPERTY
@given(data=st.binary(max_size=4096))
def test_random_bytes_fail_only_with_documented_errors(
    tmp_path: Path, ext: str, data: bytes
) -> None:
    path = tmp_path / f"random{ext}"
    path.write_bytes(data)
    only_documented_errors(path)


# --- the splitter ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splitter() -> ChunkSplitter:
    counter = HFTokenCounter(resolve_model("all-MiniLM-L6-v2").path / "tokenizer.json")
    return ChunkSplitter(counter, chunk_tokens=48, overlap_tokens=8)


PIECES = st.sampled_from([
    "Hello world. ", "这是中文句子。", "第二句！", "emoji 😀🎉 ", "עברית מימין לשמאל. ",
    "مرحبا بالعالم. ", "\x00", "\n", "\n\n", "   ", "a" * 100_000, "word " * 40, "。。。",
    "Table . . . . . . 42\n", "\u200b\u200d", "e\u0301", "\U0001f469\u200d\U0001f4bb",
])  # fmt: skip
TEXT = st.one_of(st.lists(PIECES, max_size=12).map("".join), st.text(max_size=2000), PIECES)
_SPACE = re.compile(r"\s+")


def squeeze(text: str) -> str:
    return _SPACE.sub("", text)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT)
def test_splitter_properties(splitter: ChunkSplitter, text: str) -> None:
    chunks = list(splitter.split_text(text))
    again = list(splitter.split_text(text))
    assert chunks == again  # deterministic
    whole = squeeze(normalise_text(text))
    position = 0
    covered = 0
    for chunk, tokens in chunks:
        assert chunk.strip(), "empty chunk"
        assert tokens <= splitter.chunk_tokens
        assert splitter.counter.count([chunk])[0] <= splitter.chunk_tokens + 2  # joins re-tokenise
        piece = squeeze(chunk)
        # The latest place it can start: after the previous chunk's start, and touching or
        # overlapping what is covered (repetitive text matches in many places).
        found = whole.rfind(piece, position, covered + len(piece))
        assert found >= 0, "chunk out of order, not from the text, or text lost between chunks"
        position = found  # order kept: each chunk starts at or after the previous one
        covered = max(covered, found + len(piece))
    assert covered == len(whole), "the chunks do not re-join to the text"


def test_a_single_100000_character_word_is_cut_within_the_bound(splitter: ChunkSplitter) -> None:
    chunks = list(splitter.split_text("x" * 100_000))
    assert all(t <= splitter.chunk_tokens for _, t in chunks)
    assert "".join(c for c, _ in chunks) == "x" * 100_000


def sections_of(texts: list[str]) -> Iterator[Section]:
    return (Section(t, page=i) for i, t in enumerate(texts, 1))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXT, max_size=5))
def test_chunks_keep_their_section_order(splitter: ChunkSplitter, texts: list[str]) -> None:
    pages = [c.page or 0 for c in splitter.split_sections(sections_of(texts))]
    assert pages == sorted(pages)
    assert [k for k, _ in itertools.groupby(pages)] == sorted(set(pages))
