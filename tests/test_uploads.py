"""Uploads (hardening items 11 and 12): hostile names, types by content, size limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import UploadRejected
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings, load_settings
from kb_assistant.uploads import check_batch, label
from tests.files import make_docx, make_pdf

NAMES = [
    "../../x.md",
    "/etc/passwd.md",
    "..\\..\\windows\\system32.md",
    "C:\\Users\\me\\notes.md",
    "nul\x00byte.md",
    "a" * 300 + ".md",
    "аpple.md",  # the first letter is Cyrillic
    "invoice\u202egnp.md",  # right-to-left override: shows as "invoice.md...png"
    "\n\r\t.md",
    ".hidden.md",
]


@pytest.mark.parametrize("name", NAMES)
def test_hostile_names_are_stored_under_generated_names_inside_the_home(
    assistant: Assistant, settings: Settings, name: str
) -> None:
    path = assistant.save_upload(name, f"# Upload\n\ntext of {name!r}".encode())
    uploads = (settings.home / "uploads").resolve()
    assert path.resolve().is_relative_to(uploads)
    assert path.name == "upload.md" and len(path.parent.name) == 16
    report = assistant.ingest([path], names={str(path): name})
    assert len(report.added) == 1
    [doc] = assistant.documents()
    assert doc.name == label(name)
    assert all(c.isprintable() for c in doc.name) and len(doc.name) <= 200
    assert not [p for p in settings.home.rglob("*") if ".." in p.name or "\\" in p.name]


def test_labels_escape_what_could_hide_or_reorder_text() -> None:
    assert label("invoice\u202egnp.md") == "invoice\\u202egnp.md"
    assert label("nul\x00byte.md") == "nul\\u0000byte.md"
    assert label("报告.pdf") == "报告.pdf"
    assert label("a" * 300).endswith("…") and len(label("a" * 300)) == 200


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        (
            "fake.pdf",
            b"MZ\x90\x00 a Windows program",
            "named .pdf but its content is a Windows program",
        ),
        ("fake.pdf", b"hello, not a pdf", "named .pdf but its content is something else"),
        ("notes.txt", b"%PDF-1.7\n...", "named .txt but its content is a PDF"),
        ("notes.md", b"\x00\x01\x02binary", "named .md but its content is binary data"),
        ("sheet.xlsx", None, "a ZIP archive without xl/workbook.xml"),
        ("tool.exe", b"MZ", "unsupported file type '.exe'"),
        ("noextension", b"text", "unsupported file type '(none)'"),
    ],
)
def test_types_are_checked_by_content(
    assistant: Assistant, tmp_path: Path, name: str, content: bytes | None, says: str
) -> None:
    data = (
        content
        if content is not None
        else make_docx(tmp_path / "d.docx", [("p", "x")]).read_bytes()
    )
    with pytest.raises(UploadRejected, match=r"refused|unsupported") as caught:
        assistant.save_upload(name, data)
    assert says in str(caught.value)
    assert not (assistant.settings.home / "uploads").exists() or not list(
        (assistant.settings.home / "uploads").rglob("upload*")
    )


def test_real_files_of_each_kind_are_accepted(assistant: Assistant, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["hello"]).read_bytes()
    docx = make_docx(tmp_path / "a.docx", [("p", "hello")]).read_bytes()
    assert assistant.save_upload("a.pdf", pdf).name == "upload.pdf"
    assert assistant.save_upload("A.DOCX", docx).name == "upload.docx"
    assert assistant.save_upload("u16.txt", "\ufeffhi".encode("utf-16")).name == "upload.txt"


def test_size_is_enforced_on_our_side(tmp_path: Path) -> None:
    small = build_assistant(
        load_settings(tmp_path / "h", max_upload_mb=1), embeddings=HashEmbedder()
    )
    with pytest.raises(UploadRejected, match=r"is 1\.5 MB; the limit is 1 MB per file"):
        small.save_upload("big.txt", b"x" * (3 << 19))


def test_session_totals_are_enforced_before_reading() -> None:
    mb = 1 << 20
    check_batch([mb, mb], 0, max_file=2 * mb, max_session=3 * mb)
    with pytest.raises(UploadRejected, match="over the 2 MB limit per file"):
        check_batch([3 * mb], 0, max_file=2 * mb, max_session=10 * mb)
    with pytest.raises(UploadRejected, match=r"session's upload limit of 3 MB \(1\.0 MB left\)"):
        check_batch([mb, mb], 2 * mb, max_file=2 * mb, max_session=3 * mb)
