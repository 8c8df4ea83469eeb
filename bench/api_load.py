"""Load on ``kb serve``: many concurrent chat completions against one model behind the fair
queue. Counts answers (200), refusals (429 with Retry-After), other errors and lost requests
(none may be), and the latency of the answered ones.

The server runs over a small knowledge base in a temporary home: with the scripted model (a
fixed delay per request; uvicorn in a thread) by default, or with the real SmolLM2 GGUF
(``kb serve`` in a subprocess) with ``--real``.

Usage: python -m bench.api_load [--requests 50] [--queue 8] [--delay 0.2] [--real]
       [--max-tokens 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from kb_assistant.models.chat import ScriptedChatModel

DOCS = {
    "apt.txt": "Install a package with apt install NAME. Remove it with apt remove NAME.",
    "tea.txt": "Green tea steeps for two minutes at eighty degrees. Black tea needs boiling water.",
    "cats.txt": "Cats sleep sixteen hours a day and hunt at dawn and dusk.",
}
QUESTIONS = ["How do I install a package?", "How long does green tea steep?",
             "How long do cats sleep?", "How do I remove a package?"]  # fmt: skip


def _corpus(home: Path) -> Path:
    folder = home.parent / "corpus"
    folder.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@contextlib.contextmanager
def scripted_server(home: Path, port: int, queue: int, delay: float) -> Iterator[str]:
    """uvicorn in a thread over an Assistant with the delayed scripted model."""
    from kb_assistant.api.app import create_app
    from kb_assistant.assistant import build_assistant
    from kb_assistant.models.embeddings import HashEmbedder
    from kb_assistant.settings import load_settings

    settings = load_settings(home, serve_queue=queue, abstain_min_dense=0.0)
    assistant = build_assistant(
        settings, embeddings=HashEmbedder(), chat_model=ScriptedChatModel(delay=delay)
    )
    assistant.ingest([_corpus(home)], kb="notes")
    server = uvicorn.Server(uvicorn.Config(create_app(assistant, settings), host="127.0.0.1",
                                           port=port, log_level="error", ws="none"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        assistant.close()


@contextlib.contextmanager
def real_server(home: Path, port: int, queue: int, max_tokens: int) -> Iterator[str]:
    """``kb serve`` in a subprocess with SmolLM2-135M-Instruct (llama.cpp)."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.models.embeddings import HashEmbedder
    from kb_assistant.processes import python_module, stop
    from kb_assistant.settings import load_settings

    assistant = build_assistant(load_settings(home), embeddings=HashEmbedder())
    assistant.ingest([_corpus(home)], kb="notes")
    assistant.close()
    env = {
        **os.environ, "KB_HOME": str(home), "KB_EMBEDDING_BACKEND": "fake",
        "KB_CHAT_BACKEND": "llama-cpp", "KB_CHAT_MODEL": "SmolLM2-135M-Instruct",
        "KB_MAX_TOKENS": str(max_tokens), "KB_SERVE_QUEUE": str(queue),
        "KB_ABSTAIN_MIN_DENSE": "0", "KB_TEMPERATURE": "0", "KB_SEED": "1",
    }  # fmt: skip
    command = python_module("kb_assistant.cli", "serve", "--port", str(port))
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        # one answer first: the model loads before the clock starts
        body = {"model": "kb/notes", "messages": [{"role": "user", "content": QUESTIONS[0]}]}
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        yield url
    finally:
        stop(process, 15)


async def fire(url: str, requests: int, timeout: float) -> dict[str, Any]:
    """``requests`` chat completions at once; what came back and how fast."""
    limits = httpx.Limits(max_connections=requests + 1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(i: int) -> tuple[str, float, str | None]:
            question = QUESTIONS[i % len(QUESTIONS)]
            body = {"model": "kb/notes", "messages": [{"role": "user", "content": question}]}
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                return f"error:{type(exc).__name__}", time.perf_counter() - started, None
            seconds = time.perf_counter() - started
            return str(response.status_code), seconds, response.headers.get("retry-after")

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    codes = Counter(code for code, _, _ in results)
    answered = sorted(s for code, s, _ in results if code == "200")
    retry = [int(r) for code, _, r in results if code == "429" and r is not None]
    errors = sum(n for code, n in codes.items() if code not in ("200", "429"))
    return {
        "requests": requests, "ok_200": codes.get("200", 0), "busy_429": codes.get("429", 0),
        "errors": errors, "lost": requests - len(results), "codes": dict(codes),
        "p50_s": round(statistics.median(answered), 3) if answered else None,
        "p95_s": round(answered[math.ceil(0.95 * len(answered)) - 1], 3) if answered else None,
        "max_s": round(answered[-1], 3) if answered else None,
        "retry_after_s": {"min": min(retry), "max": max(retry)} if retry else None,
        "wall_s": round(wall, 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--queue", type=int, default=8, help="serve_queue: places in line")
    parser.add_argument("--delay", type=float, default=0.2, help="scripted: seconds per answer")
    parser.add_argument("--real", action="store_true", help="SmolLM2 via llama.cpp")
    parser.add_argument("--max-tokens", type=int, default=48, help="real: answer length cap")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with socket.socket() as s:  # a free loopback port
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        server = (real_server(home, port, args.queue, args.max_tokens) if args.real
                  else scripted_server(home, port, args.queue, args.delay))  # fmt: skip
        with server as url:
            result = asyncio.run(fire(url, args.requests, timeout=600))
    result = {
        "model": "SmolLM2-135M-Instruct" if args.real else f"scripted, {args.delay} s/answer",
        "queue": args.queue, **({"max_tokens": args.max_tokens} if args.real else {}), **result,
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
