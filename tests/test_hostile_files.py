"""Hostile files (hardening items 6-9): bombs, looping and crashing parsers, amplification.

Every file here is built for real (bytes on disk) and ingested through the product's path:
the worker process, its limits, the pre-parse checks. Each one fails alone with a reason; the
file after it in the same batch still goes in.
"""

from __future__ import annotations

import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb_assistant import loaders
from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import HostileDocument
from kb_assistant.ingest import IngestReport
from kb_assistant.loaders import limits, sandbox
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings
from tests.files import deflate_bomb, make_docx, make_raw_pdf, make_zip


def run(tmp_path: Path, *files: Path, **overrides: object) -> tuple[IngestReport, Assistant]:
    """Ingest ``files`` then a good file, in one batch."""
    good = tmp_path / "zz-good.txt"
    good.write_text("a good file about apt and dpkg", encoding="utf-8")
    assistant = build_assistant(
        load_settings(tmp_path / "home", **overrides), embeddings=HashEmbedder()
    )
    report = assistant.ingest([*files, good])
    assert [Path(p).name for p in report.added][-1] == "zz-good.txt", report.failed
    return report, assistant


def reason(report: IngestReport, name: str) -> str:
    found = [f.error for f in report.failed if Path(f.path).name == name]
    assert found, f"{name} did not fail: {report.to_json()}"
    return found[0]


@pytest.fixture(scope="module")
def pdf_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~300 KB PDF whose page content inflates to 300 MB of spaces."""
    path = tmp_path_factory.mktemp("bombs") / "bomb.pdf"
    make_raw_pdf(path, b"", compressed=deflate_bomb(300 << 20))
    assert 250_000 < path.stat().st_size < 350_000
    return path


# --- item 6: decompression bombs ------------------------------------------------------------


def test_pdf_bomb_is_rejected_at_the_decompression_limit(pdf_bomb: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(HostileDocument, match="decompression limit"):
        limits.inspect(pdf_bomb, "pdf")
    assert time.perf_counter() - started < 30  # a hang guard; the figure is in bench/
    report, _ = run(tmp_path, pdf_bomb)
    assert "decompression limit" in reason(report, "bomb.pdf")


def test_text_bomb_in_a_word_file_is_rejected(tmp_path: Path) -> None:
    """word/document.xml inflating 1000:1 to 300 MB: refused from the central directory."""
    docx = make_docx(tmp_path / "plain.docx", [("p", "hello")])
    with zipfile.ZipFile(docx) as source:
        entries = {i.filename: source.read(i) for i in source.infolist()}
    bomb = tmp_path / "bomb.docx"
    make_zip(bomb, {k: v for k, v in entries.items() if k != "word/document.xml"})
    block = b"<w:t>" + b"a" * (1 << 20) + b"</w:t>"
    with (
        zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("word/document.xml", "w") as part,
    ):
        for _ in range(300):
            part.write(block)
    report, _ = run(tmp_path, bomb)
    assert "decompression limit" in reason(report, "bomb.docx")


def test_large_file_with_no_text_fails_rather_than_indexing_nothing(tmp_path: Path) -> None:
    """A PDF that inflates within the limit to blank pages is an error, not an empty doc."""
    blank = make_raw_pdf(tmp_path / "blank.pdf", b"", compressed=deflate_bomb(8 << 20))
    report, _ = run(tmp_path, blank)
    assert "no extractable text" in reason(report, "blank.pdf")


# --- item 9: ZIP containers and XML ---------------------------------------------------------


def test_zip_with_too_many_entries_is_rejected(tmp_path: Path) -> None:
    many = make_zip(tmp_path / "many.xlsx", {f"xl/p{i}.bin": b"" for i in range(10_001)})
    report, _ = run(tmp_path, many)
    assert "10001 entries" in reason(report, "many.xlsx")
    assert "decompression limit" in reason(report, "many.xlsx")


def test_zip_declaring_huge_sizes_is_rejected_before_inflating(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.epub", {"mimetype": b"application/epub+zip", "a.txt": b"x"})
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last entry's central directory record
    data[central + 24 : central + 28] = (3_000_000_000).to_bytes(4, "little")  # uncompressed
    path.write_bytes(bytes(data))
    report, _ = run(tmp_path, path)
    assert "3,000,000,000 bytes (decompression limit" in reason(report, "liar.epub")


def test_zip64_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.docx"
    with (
        zipfile.ZipFile(path, "w") as archive,
        archive.open("word/document.xml", "w", force_zip64=True) as part,
    ):
        part.write(b"<w:document/>")
    report, _ = run(tmp_path, path)
    assert "ZIP64" in reason(report, "wide.docx")


LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">'
        % (i, b"".join(b"&lol%s;" % (b"" if i == 1 else b"%d" % (i - 1)) for _ in range(10)))
        for i in range(1, 10)
    )
    + b"]>\n"
)


def test_entity_bomb_in_a_word_file_is_rejected(tmp_path: Path) -> None:
    docx = make_docx(tmp_path / "plain.docx", [("p", "hello")])
    with zipfile.ZipFile(docx) as source:
        entries = {i.filename: source.read(i) for i in source.infolist()}
    body = entries["word/document.xml"]
    entries["word/document.xml"] = LAUGHS + body[body.index(b"<w:document") :].replace(
        b"hello", b"&lol9;"
    )
    bomb = make_zip(tmp_path / "laughs.docx", entries)
    report, _ = run(tmp_path, bomb)
    assert "declares XML entities (lol" in reason(report, "laughs.docx")


def test_entity_bomb_in_html_is_parsed_without_expanding(tmp_path: Path) -> None:
    page = tmp_path / "laughs.html"
    page.write_bytes(
        LAUGHS.replace(b"lolz", b"html") + b"<html><body><p>safe &lol9; text</p></body></html>"
    )
    report, assistant = run(tmp_path, page)
    if page.name in {Path(p).name for p in report.added}:
        texts = [h.chunk.text for h in assistant.search("safe text", k=5)]
        assert all(len(t) < 1000 for t in texts) and any("safe" in t for t in texts)
    else:
        assert reason(report, "laughs.html")


def test_spreadsheets_are_parsed_through_defusedxml() -> None:
    from openpyxl import xml

    assert xml.DEFUSEDXML is True


# --- item 7: parsers that hang, spin, eat memory or crash ----------------------------------


@pytest.fixture
def hostile_loaders(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let the parser worker import ``tests.hostile_loaders``. The product starts it isolated
    (``python -I``: only the installed package), so the test adds this repository's root to
    the worker's path through a launcher; the worker itself is the real one."""
    root = str(Path(__file__).resolve().parent.parent)

    def with_tests(module: str, *args: str) -> list[str]:
        code = (
            f"import runpy, sys; sys.path.insert(0, {root!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
        )
        return [sys.executable, "-I", "-c", code, *args]

    sandbox.POOL.clear()  # idle workers started without the launcher
    monkeypatch.setattr(sandbox, "python_module", with_tests)
    yield
    sandbox.POOL.clear()


@pytest.mark.parametrize(
    ("loader", "overrides", "expected"),
    [
        ("sleeps_forever", {"parse_timeout_s": 1.5}, "produced nothing for 2 s and was stopped"),
        ("eats_memory", {"parse_memory_mb": 1024}, "needs more than 1024 MB of memory"),
        ("crashes", {}, "the parser crashed (SIGSEGV)"),
    ],
)
@pytest.mark.usefixtures("hostile_loaders")
def test_a_misbehaving_parser_is_stopped_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str, overrides: dict[str, object],
    expected: str,
) -> None:  # fmt: skip
    monkeypatch.setitem(loaders._FORMATS, ".log", ("text", f"tests.hostile_loaders:{loader}"))
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("anything", encoding="utf-8")
    second.write_text("anything else", encoding="utf-8")
    report, _ = run(tmp_path, first, second, **overrides)
    assert expected in reason(report, "a.log")
    assert expected in reason(report, "b.log")  # a fresh worker took the next file


@pytest.mark.usefixtures("hostile_loaders")
def test_a_parser_spinning_on_the_processor_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb_assistant.ingest import ingest
    from kb_assistant.loaders.sandbox import ParseLimits

    monkeypatch.setitem(loaders._FORMATS, ".log", ("text", "tests.hostile_loaders:spins_forever"))
    path = tmp_path / "spin.log"
    path.write_text("x", encoding="utf-8")
    assistant = build_assistant(load_settings(tmp_path / "home"), embeddings=HashEmbedder())
    assistant.create_kb("default")
    report = ingest(
        assistant.knowledge_base(), HashEmbedder(), [path], chunk_tokens=128, chunk_overlap=16,
        max_rows=10, parse_limits=ParseLimits(timeout=30, cpu_seconds=1.0),
    )  # fmt: skip
    assert "more than 1 s of processor time" in report.failed[0].error


# --- item 8: amplification ------------------------------------------------------------------


def test_small_pdf_yielding_440k_characters_is_truncated(tmp_path: Path) -> None:
    lines = b"(Forty-four characters of amplified text ok.) Tj T*\n" * 10_000
    pdf = make_raw_pdf(tmp_path / "amp.pdf", b"BT /F1 0.05 Tf 0.07 TL 10 780 Td\n" + lines + b"ET")
    size = pdf.stat().st_size
    assert size <= 5_000
    _report, assistant = run(tmp_path, pdf)
    [doc] = [d for d in assistant.documents() if d.name == "amp.pdf"]
    assert any(n.startswith("truncated: only the first") for n in doc.notes), doc.notes
    kb = assistant.knowledge_base()
    texts = [
        c.text
        for c in kb.catalog.chunks_by_ids(range(1, 100_000)).values()
        if c.doc_id == doc.doc_id
    ]
    allowance = limits.characters_for(size)  # 200,000 of the 470,000 characters
    assert 0.9 * allowance < sum(len(t) for t in texts) < 1.25 * allowance  # chunks overlap


@pytest.mark.usefixtures("hostile_loaders")
def test_endless_parser_output_is_cut_at_the_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(loaders._FORMATS, ".log", ("text", "tests.hostile_loaders:endless_text"))
    path = tmp_path / "endless.log"
    path.write_text("tiny", encoding="utf-8")
    _report, assistant = run(tmp_path, path)
    [doc] = [d for d in assistant.documents() if d.name == "endless.log"]
    assert doc.notes[0].startswith("truncated: only the first 200,000 characters")


def test_csv_with_a_million_rows_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,value\n" + "".join(f"{i},v{i}\n" for i in range(1_000_000)))
    _report, assistant = run(tmp_path, path, max_rows_per_table=2_000)
    [doc] = [d for d in assistant.documents() if d.name == "rows.csv"]
    assert "truncated: only the first 2000 rows" in doc.notes[0]
