"""The app in a real browser: cold start, upload-to-indexed, and TTFT browser vs ``kb chat``.

1. Cold start: ``streamlit run app.py`` started -> server healthy -> first page usable in
   Debian's chromium (the title drawn).
2. Upload: a 50-page PDF (Debian FAQ text), from the click on "Add" until "Indexed" shows;
   ``kb ingest`` of the same file into a fresh knowledge base for reference.
3. Time to first token, measured the way a user waits: from pressing Enter (browser) or
   sending the line (``kb chat`` on a pipe) until the first answer token is on screen. Both ask
   the same two questions in a new conversation (the second is a follow-up), REPS times, in
   the same order; each side starts with a fresh process (model and prompt cache cold).

Usage: python -m bench.ui_latency [--pages 50] [--reps 3] [--record]
"""

from __future__ import annotations

import argparse
import glob
import html
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from bench.measure import machine  # noqa: E402
from tests.browser import chromium, serve_app, wait_idle  # noqa: E402
from tests.files import make_pdf  # noqa: E402

WARM_UP = "What is a Debian package?"
MEASURED = "How do I install it with apt?"
CHAT_BOX = "Ask a question about your documents"


def faq_pages(count: int, chars: int = 2600) -> list[str]:
    """``count`` pages of Debian FAQ text (Latin-1, as the PDF font needs)."""
    files = sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html"))
    if not files:
        raise SystemExit("needs the debian-faq package (apt-get install debian-faq)")
    text = " ".join(
        re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", Path(f).read_text())))
        for f in files
    )
    text = text.encode("latin-1", "replace").decode("latin-1")
    return [text[i * chars : (i + 1) * chars] for i in range(count)]


def browser_run(home: Path, env: dict[str, str], pdf: Path, reps: int) -> dict[str, Any]:
    """Cold start, upload-to-indexed and browser TTFTs in one server's life."""
    out: dict[str, Any] = {"ttft": []}
    with serve_app(home, env) as server, chromium() as browser:
        out["healthy_s"] = server.healthy_after
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url)
        page.get_by_text("Documents in default").wait_for(timeout=120_000)
        out["usable_s"] = time.perf_counter() - server.started
        page.locator('input[type="file"]').first.set_input_files(str(pdf))
        button = page.get_by_role("button", name=re.compile(r"Add 1 file"))
        started = time.perf_counter()
        button.click()
        page.get_by_text(re.compile(r"Indexed in .* 1 added")).wait_for(timeout=600_000)
        out["upload_s"] = time.perf_counter() - started
        page.goto(f"{server.url}/chat")
        try:
            for _ in range(reps):
                page.get_by_role("button", name="New conversation").click()
                _wait_empty(page)
                _ask(page, WARM_UP)
                out["ttft"].append(_ask(page, MEASURED))
        except Exception:
            page.screenshot(path=str(home / "failed.png"), full_page=True)
            print(f"screenshot: {home / 'failed.png'}", file=sys.stderr)
            raise
    return out


def _wait_empty(page: Any) -> None:
    """After "New conversation": no message shown and the page idle."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stChatMessage\"]')", timeout=60_000
    )
    wait_idle(page)


def _ask(page: Any, question: str) -> float:
    """Seconds from Enter to the first answer token drawn (the streaming cursor shows)."""
    answers = page.locator('[data-testid="stChatMessage"]').count()
    box = page.get_by_placeholder(CHAT_BOX)
    box.fill(question)
    started = time.perf_counter()
    box.press("Enter")
    page.wait_for_function(
        """n => { const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                  if (m.length < n + 2) return false;
                  const t = m[n + 1].innerText;
                  return t.includes('▌') || t.includes('Why this answer'); }""",
        arg=answers, timeout=60_000, polling=50,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    wait_idle(page, 300_000)
    return seconds


def cli_ttft(home: Path, env: dict[str, str], reps: int) -> list[float]:
    """The same sequence through ``kb chat``: per rep, /new, the two questions; seconds to the
    measured answer's first byte."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kb_assistant.cli", "chat"], cwd=ROOT,
        env={**env, "KB_HOME": str(home)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    fd = process.stdout.fileno()
    _read_until(fd, b"you> ")
    times = []
    for _ in range(reps):
        for line in ("/new", WARM_UP):
            process.stdin.write(f"{line}\n".encode())
            process.stdin.flush()
            _read_until(fd, b"you> ")
        process.stdin.write(f"{MEASURED}\n".encode())
        process.stdin.flush()
        started = time.perf_counter()
        select.select([fd], [], [], 300)
        times.append(time.perf_counter() - started)
        _read_until(fd, b"you> ")
    process.stdin.close()
    process.wait(60)
    return times


def _read_until(fd: int, marker: bytes, timeout: float = 300) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(data[-500:])
        if not select.select([fd], [], [], 1)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"kb chat ended: {data[-500:]!r}")
        data += chunk
    return data


def core_ttfts(home: Path) -> list[float]:
    """``first_token_after_s`` of every measured question, in the order asked."""
    from kb_assistant.vectorstore.conversations import ConversationStore

    store = ConversationStore(home / "chats.sqlite")
    try:
        turns = [t for s in store.conversations() for t in store.turns(s.session_id)]
    finally:
        store.close()
    measured = sorted((t for t in turns if t.question == MEASURED), key=lambda t: t.created_at)
    return [float(t.trace.get("first_token_after_s") or 0) for t in measured]


def cli_ingest(home: Path, env: dict[str, str], pdf: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kb_assistant.cli", "ingest", str(pdf), "--kb", "cli"], cwd=ROOT,
        env={**env, "KB_HOME": str(home)}, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-ui-bench-"))
    pdf = make_pdf(work / "faq.pdf", faq_pages(args.pages))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env = {**clean, "KB_MODEL_CACHE": str(work / "models"), "KB_TEMPERATURE": "0",
           "KB_SEED": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    # Export the ONNX embedding model once, outside every measurement.
    cli_ingest(work / "warm", env, make_pdf(work / "tiny.pdf", ["warm up"]))
    home = work / "home"
    result = browser_run(home, env, pdf, args.reps)
    cli = cli_ttft(home, env, args.reps)
    ingest_cli = cli_ingest(work / "cli-home", env, pdf)
    core = core_ttfts(home)
    core_browser, core_cli = core[: args.reps], core[args.reps :]
    browser_ttft, cli_median = statistics.median(result["ttft"]), statistics.median(cli)
    rows = [
        ("Cold start: server healthy", f"{result['healthy_s']:.2f} s"),
        ("Cold start: first page usable in chromium", f"{result['usable_s']:.2f} s"),
        (f"Upload click -> indexed, {args.pages}-page PDF", f"{result['upload_s']:.2f} s"),
        ("`kb ingest` of the same PDF (process wall)", f"{ingest_cli:.2f} s"),
        ("TTFT in the browser (median)", f"{browser_ttft:.3f} s "
         f"({', '.join(f'{x:.3f}' for x in result['ttft'])})"),
        ("TTFT through `kb chat` (median)", f"{cli_median:.3f} s "
         f"({', '.join(f'{x:.3f}' for x in cli)})"),
        ("Browser / CLI TTFT", f"{browser_ttft / cli_median:.3f}"),
        ("Inside the core (question in -> first token out): browser",
         ", ".join(f"{x:.3f}" for x in core_browser)),
        ("Inside the core: `kb chat`", ", ".join(f"{x:.3f}" for x in core_cli)),
    ]  # fmt: skip
    table = "| Measure | Value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.record:
        block = (
            f"\n### The app in a browser ({date.today()})\n\n{machine()}; Debian chromium "
            f"headless via Playwright.\n`python -m bench.ui_latency --pages {args.pages} "
            f"--reps {args.reps}`\n\n{table}\n"
        )
        with (ROOT / "docs" / "benchmarks.md").open("a", encoding="utf-8") as fh:
            fh.write(block)


if __name__ == "__main__":
    main()
