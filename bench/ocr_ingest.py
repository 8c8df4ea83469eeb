"""A 50-page scanned PDF through the real ingest, next to a batch of text files.

The scan (image pages only, 150 dpi, English, Chinese and mixed pages from tests/scans.py)
and 20 Markdown files are ingested in one batch with the default embedding model, as
``kb ingest`` does. Reported: the wall time, OCR pages per minute, when each text file was
written (they must not wait behind the OCR), and how good the page progress's ETA was: the
ETA a rate-based bar shows after 10 pages against the real finish.

Usage: python -m bench.ocr_ingest [--pages 50] [--dpi 150] [--record]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.measure import machine, record_entry
from tests.scans import image_pdf, render_page, sample_paragraphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    from kb_assistant.assistant import build_assistant
    from kb_assistant.ingest import IngestProgress
    from kb_assistant.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "batch"
        folder.mkdir()
        kinds = ("en", "zh", "mixed")
        pages = [
            render_page(sample_paragraphs(kinds[i % 3], start=i, count=6), dpi=args.dpi).image
            for i in range(args.pages)
        ]
        image_pdf(folder / "a-scan.pdf", pages, args.dpi)
        for i in range(20):
            (folder / f"note-{i:02}.md").write_text(
                f"# Note {i}\n\n" + "\n\n".join(sample_paragraphs("en", start=i, count=3)),
                encoding="utf-8",
            )
        assistant = build_assistant(load_settings(Path(tmp) / "home"))
        assistant.embedder_for(assistant.create_kb("default"))  # model loaded before timing
        seen: list[tuple[float, int, int]] = []  # time, pages done, total
        started = time.perf_counter()

        def progress(p: IngestProgress) -> None:
            now = time.perf_counter() - started
            if p.pages_total and p.current and p.current.endswith(".pdf"):
                seen.append((now, p.pages_done, p.pages_total))

        report = assistant.ingest([folder], progress=progress)
        wall = time.perf_counter() - started
        assistant.close()
    added = [Path(p).name for p in report.added]
    scan_at = added.index("a-scan.pdf") + 1
    ocr_start = seen[0][0] if seen else 0.0
    ocr_end = seen[-1][0] if seen else wall
    per_minute = args.pages / max(1e-9, (ocr_end - ocr_start)) * 60
    eta_row = _eta_at(seen, 10)
    rows = [
        ["measure", "value"],
        ["pages", args.pages],
        ["dpi", args.dpi],
        ["wall time, whole batch (s)", f"{wall:.1f}"],
        ["OCR pages per minute", f"{per_minute:.1f}"],
        ["seconds per page", f"{(ocr_end - ocr_start) / args.pages:.2f}"],
        ["position of the scan among the 21 files written", f"{scan_at} of {len(added)}"],
        ["ETA shown after 10 pages (s) / real remaining (s)", eta_row],
        ["chunks", report.chunks_added],
        ["failed", len(report.failed)],
    ]
    notes = [f"{machine()}; default embedding model; the scan and 20 Markdown files in one batch."]
    record_entry(
        "OCR ingest of a 50-page scanned PDF", "python -m bench.ocr_ingest", rows, notes,
        write=args.record,
    )  # fmt: skip


def _eta_at(seen: list[tuple[float, int, int]], pages: int) -> str:
    """The ETA a rate-based bar shows when ``pages`` pages are done, and the truth."""
    at = next(((t, done, total) for t, done, total in seen if done >= pages), None)
    if at is None or not seen:
        return "-"
    t, done, total = at
    rate = (t - seen[0][0]) / max(1, done - seen[0][1])
    return f"{rate * (total - done):.0f} / {seen[-1][0] - t:.0f}"


if __name__ == "__main__":
    main()
