"""Drive the real app in a real browser: ``streamlit run app.py`` on a loopback port, and
Debian's chromium through Playwright (never ``playwright install``: no download)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kb_assistant.processes import stop
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (apt-get install chromium; scripts/test does this in CI)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/setup --dev installs it)"
    return None


@dataclass
class AppServer:
    """A running ``streamlit run app.py``."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.perf_counter() when the process was started
    healthy_after: float = 0.0  # seconds until /_stcore/health answered


@contextmanager
def serve_app(
    home: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[AppServer]:
    """Start the app on a free loopback port with ``KB_HOME=home``; stop it afterwards."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    full_env = {**clean, "KB_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    home.mkdir(parents=True, exist_ok=True)
    log = home / "streamlit.log"
    command = [
        sys.executable, "-I", "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    server = AppServer(f"http://127.0.0.1:{port}", process, log, started)
    try:
        _wait_healthy(server, timeout)
        yield server
    finally:
        stop(process, 10)


def _wait_healthy(server: AppServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"streamlit exited: {server.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    server.healthy_after = time.perf_counter() - server.started
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"streamlit did not answer in {timeout} s: {server.log.read_text()}")


@dataclass
class RequestLog:
    """Every URL the browser asked for."""

    urls: list[str] = field(default_factory=list)

    def record(self, request: Any) -> None:
        self.urls.append(str(request.url))

    def off_machine(self) -> list[str]:
        """Requests to any host but 127.0.0.1 (fonts, analytics, images in answers...)."""
        return [
            u for u in self.urls
            if urlparse(u).scheme in ("http", "https", "ws", "wss")
            and urlparse(u).hostname != "127.0.0.1"
        ]  # fmt: skip


@contextmanager
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request it gets: ``(base url, paths)``.

    Planted as the target of images and links in documents and answers: a rendered page that
    fetched one would show here (loopback traffic passes the offline guard, so this is the
    one place such a request would be seen).
    """
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_idle(page: Any, timeout: float = 120_000) -> None:
    """Wait until the app's script has stopped running (Streamlit marks its state on stApp)."""
    page.wait_for_timeout(200)  # let a rerun that was just triggered start
    page.wait_for_function(
        """() => { const app = document.querySelector('[data-testid="stApp"]');
                   const state = app && app.getAttribute('data-test-script-state');
                   return state === 'notRunning'; }""",
        timeout=timeout,
    )
