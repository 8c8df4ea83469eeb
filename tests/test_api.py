"""``kb serve`` against a live server on loopback: the official ``openai`` client, curl, the
native routes, keys, limits, the fair queue and client disconnects; one test streams from the
real SmolLM2 through ``kb serve`` in a subprocess."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from click.testing import CliRunner
from langchain_core.messages import AIMessage

from kb_assistant.api.app import create_app, kb_error_response
from kb_assistant.api.jobs import JobBoard
from kb_assistant.api.keys import KEYS_FILE, KeyStore
from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.cli import main
from kb_assistant.cli.serve import _finish_jobs
from kb_assistant.errors import (
    ApiKeyError,
    ConfigError,
    CorruptKnowledgeBase,
    InvalidName,
    KBError,
    KnowledgeBaseError,
    ModelBusy,
)
from kb_assistant.models.chat import ScriptedChatModel
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.models.queue import ModelQueue
from kb_assistant.processes import python_module, stop
from kb_assistant.settings import load_settings
from tests.ports import free_port

CURL = "/usr/bin/curl"
DOCS = {
    "apt.txt": "Install a package with apt install NAME. Remove it with apt remove NAME.",
    "tea.txt": "Green tea steeps for two minutes at eighty degrees. Black tea needs boiling water.",
}


# At temperature 0, SmolLM2 writes this essay to the max_tokens limit.
ESSAY = "Write a long essay about the history of tea, with at least ten paragraphs."


class Live:
    """A running server and what it serves."""

    def __init__(self, url: str, assistant: Assistant, model: ScriptedChatModel) -> None:
        self.url = url
        self.assistant = assistant
        self.model = model

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health").json())


@contextlib.contextmanager
def serving(
    home: Path, *responses: str, pause: float = 0.0, queue: int = 8,
    model: ScriptedChatModel | None = None, **overrides: Any,
) -> Iterator[Live]:  # fmt: skip
    """A uvicorn server in a thread over a knowledge base 'notes' made of ``DOCS``; it is
    created as if bound to the ``serve_host`` setting (it listens on 127.0.0.1 whatever that
    says)."""
    # hash embeddings score paraphrases low: answer whatever is retrieved
    settings = load_settings(home, **{"abstain_min_dense": 0.0, **overrides})
    model = model or ScriptedChatModel(responses=list(responses), pause=pause)
    assistant = build_assistant(settings, embeddings=HashEmbedder(), chat_model=model)
    if not assistant.library.exists("notes"):
        folder = home.parent / "corpus"
        folder.mkdir(exist_ok=True)
        for name, text in DOCS.items():
            (folder / name).write_text(text, encoding="utf-8")
        assistant.ingest([folder], kb="notes")
    app = create_app(assistant, settings, queue=ModelQueue(queue))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           ws="none", lifespan="off"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield Live(f"http://127.0.0.1:{port}", assistant, model)
    finally:
        model.pause = 0.0
        server.should_exit = True
        thread.join(10)
        app.state.server.jobs.wait(30)
        assistant.close()


@pytest.fixture
def live(kb_home: Path) -> Iterator[Live]:
    with serving(kb_home) as server:
        yield server


# --- the OpenAI-compatible routes ---------------------------------------------------------


def test_chat_completion_from_a_knowledge_base_cites_its_sources(live: Live) -> None:
    reply = live.client().chat.completions.create(
        model="kb/notes", messages=[{"role": "user", "content": "How long does green tea steep?"}]
    )
    text = reply.choices[0].message.content or ""
    assert "two minutes" in text and "[1]" in text
    assert reply.choices[0].finish_reason == "stop"
    citations = (reply.model_extra or {})["citations"]
    assert citations[0]["source"].endswith("tea.txt") and "two minutes" in citations[0]["text"]
    assert isinstance(citations[0]["chunk_id"], int) and "page" in citations[0]
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_streaming_gives_chunks_then_citations_and_done(live: Live) -> None:
    stream = live.client().chat.completions.create(
        model="kb/notes", stream=True,
        messages=[{"role": "user", "content": "How do I install a package with apt?"}],
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 4 and "apt install NAME" in text and "[1]" in text
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert (last.model_extra or {})["citations"][0]["source"].endswith("apt.txt")


def test_earlier_messages_are_the_history(live: Live) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I install a package with apt?"},
        {"role": "assistant", "content": "Use apt install NAME [1]."},
        {"role": "user", "content": "And how do I remove it?"},
    ]
    live.client().chat.completions.create(model="kb/notes", messages=messages)  # type: ignore[arg-type]
    prompts = "\n".join(str(m.content) for call in live.model.calls for m in call)
    assert "How do I install a package with apt?" in prompts and "remove it" in prompts


def test_the_chat_model_by_name_answers_without_retrieval(kb_home: Path) -> None:
    with serving(kb_home, "Hello there, friend.", "Streamed hello.") as live:
        client = live.client()
        reply = client.chat.completions.create(
            model="scripted-fake", messages=[{"role": "user", "content": "Hi"}]
        )
        assert reply.choices[0].message.content == "Hello there, friend."
        assert "citations" not in (reply.model_extra or {})
        chunks = list(
            client.chat.completions.create(
                model="scripted-fake", stream=True, messages=[{"role": "user", "content": "Hi"}]
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Streamed hello."
        assert "<source" not in str(live.model.calls[0])  # no passages: no retrieval


def test_unknown_models_are_404_in_openai_shape(live: Live) -> None:
    for model in ("kb/nothing", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            live.client().chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}]
            )
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "model_not_found"
        assert model in error["message"] and error["type"] == "invalid_request_error"


def test_embeddings_and_models(live: Live) -> None:
    client = live.client()
    one = client.embeddings.create(model="fake-hash-256", input="green tea")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 256
    assert np.isclose(np.linalg.norm(one.data[0].embedding), 1.0, atol=1e-4)
    many = client.embeddings.create(model="kb/notes", input=["a", "b c"], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1] and len(many.data[1].embedding) == 256
    assert many.usage.prompt_tokens == 3
    ids = {m.id for m in client.models.list()}
    assert ids == {"kb/notes", "scripted-fake"}


def test_curl_streams_server_sent_events(live: Live) -> None:
    question = [{"role": "user", "content": "How long does green tea steep?"}]
    body = json.dumps({"model": "kb/notes", "stream": True, "messages": question})
    done = subprocess.run(
        [CURL, "-sN", f"{live.url}/v1/chat/completions", "-H", "Content-Type: application/json",
         "-d", body], capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    events = [e for e in done.stdout.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "stop" and last["citations"]
    pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-2]]
    assert len(pieces) > 3 and "two minutes" in "".join(pieces)


# --- native routes ------------------------------------------------------------------------


def _curl_json(*args: str) -> Any:
    done = subprocess.run([CURL, "-s", *args], capture_output=True, text=True, timeout=30,
                          check=True)  # fmt: skip
    return json.loads(done.stdout)


def test_upload_becomes_a_job_polled_to_done_then_managed(live: Live, tmp_path: Path) -> None:
    doc = tmp_path / "cats.md"
    doc.write_text("# Cats\n\nCats sleep sixteen hours a day.\n", encoding="utf-8")
    job = _curl_json("-F", f"files=@{doc}", f"{live.url}/kbs/pets/documents")["job"]
    state: dict[str, Any] = {}
    for _ in range(200):
        state = _curl_json(f"{live.url}/jobs/{job}")
        if state["state"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert state["state"] == "done", state
    assert state["progress"]["files_done"] == 1 and state["progress"]["chunks_done"] >= 1
    assert len(state["report"]["added"]) == 1 and state["report"]["chunks_added"] >= 1
    assert state["files"] == [{"name": "cats.md", "outcome": "added"}]
    http = httpx.Client(base_url=live.url)
    docs = http.get("/kbs/pets/documents").json()
    assert [d["name"] for d in docs] == ["cats.md"]
    hits = http.post("/kbs/pets/search", json={"query": "how long do cats sleep", "k": 2}).json()
    assert "sixteen" in hits[0]["text"]
    answer = http.post("/kbs/pets/ask", json={"question": "How long do cats sleep?"}).json()
    assert "sixteen hours" in answer["answer"] and answer["citations"][0]["name"] == "cats.md"
    chat = http.post("/kbs/pets/conversations").json()["conversation"]
    for question in ("How long do cats sleep?", "And when do they hunt?"):
        http.post("/kbs/pets/ask", json={"question": question, "conversation": chat})
    assert "How long do cats sleep?" in str(live.model.calls[-1])  # the follow-up's history
    assert {k["name"] for k in http.get("/kbs").json()} == {"notes", "pets"}
    assert http.delete("/kbs/pets/documents/cats.md").json()[0]["doc_id"] == docs[0]["doc_id"]
    assert http.get("/kbs/pets/documents").json() == []
    assert http.delete("/kbs/pets").status_code == 200
    assert http.get("/jobs/nope").status_code == 404


def test_errors_become_4xx_with_their_message(live: Live) -> None:
    http = httpx.Client(base_url=live.url)
    missing = http.post("/kbs/nothing/ask", json={"question": "hi"})
    assert missing.status_code == 404 and "nothing" in missing.json()["error"]["message"]
    empty = http.post("/kbs/notes/ask", json={"question": "  "})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
    gone = http.delete("/kbs/notes/documents/nope.txt")
    assert gone.status_code == 404 and "nope.txt" in gone.json()["error"]["message"]
    assert http.post("/kbs", json={"name": "notes"}).status_code == 409
    assert http.post("/kbs", json={"name": "../x"}).status_code == 400
    invalid = http.post("/kbs/notes/search", json={"query": "tea", "k": 1000})
    assert invalid.status_code == 422 and "k" in invalid.json()["error"]["message"]
    bad = http.post("/kbs/notes/documents", files={"files": ("x.exe", b"MZ\x90\x00")})
    assert bad.status_code == 400 and "error" in bad.json()


def test_docs_are_served_offline(live: Live) -> None:
    page = httpx.get(f"{live.url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert not re.search(r"https?://", page.text)
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text)
    assets += re.findall(r"""url: ?['"](/[^'"]+)['"]""", page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    assert not re.search(r"https?://", httpx.get(f"{live.url}/redoc").text)
    for asset in assets:
        assert httpx.get(live.url + asset).status_code == 200, asset


# --- security and limits ------------------------------------------------------------------


def test_keys_are_made_listed_and_revoked_and_guard_every_request(kb_home: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["serve", "keys", "add", "laptop"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("kb-") and len(key) > 40
    stored = kb_home / KEYS_FILE
    assert stored.stat().st_mode & 0o777 == 0o600 and key not in stored.read_text()
    listed = runner.invoke(main, ["serve", "keys", "list", "--json"])
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["laptop"] and len(rows[0]["fingerprint"]) == 4
    assert key not in listed.output
    assert runner.invoke(main, ["serve", "keys", "add", "laptop"]).exit_code == 1
    with serving(kb_home) as live:
        for wrong in ("none", key + "x"):
            with pytest.raises(openai.AuthenticationError):
                live.client(wrong).models.list()
        assert httpx.get(f"{live.url}/kbs").status_code == 401
        assert httpx.get(f"{live.url}/health").status_code == 200
        assert {m.id for m in live.client(key).models.list()} >= {"kb/notes"}
        revoked = runner.invoke(main, ["serve", "keys", "revoke", "laptop"])
        assert revoked.exit_code == 0
        runner.invoke(main, ["serve", "keys", "add", "other"])
        with pytest.raises(openai.AuthenticationError):
            live.client(key).models.list()


def test_serving_beyond_loopback_needs_a_key(kb_home: Path) -> None:
    port = str(free_port())
    refused = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", port])
    assert refused.exit_code == 1 and "refusing to listen on 0.0.0.0" in refused.output
    assert "kb serve keys add" in refused.output


def test_oversized_requests_get_413(kb_home: Path, tmp_path: Path) -> None:
    with serving(kb_home, max_upload_mb=1) as live:
        http = httpx.Client(base_url=live.url)
        big = {"model": "kb/notes", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
        response = http.post("/v1/chat/completions", json=big)
        assert response.status_code == 413 and "too large" in response.json()["error"]["message"]
        upload = http.post("/kbs/notes/documents",
                           files={"files": ("big.txt", b"word " * (700 << 10))})  # fmt: skip
        assert upload.status_code == 413 and "max_upload_mb" in upload.json()["error"]["message"]
        chunked = http.post("/kbs/notes/search", content=iter([b"{" + b" " * (1 << 19)] * 3))
        assert chunked.status_code == 413  # no Content-Length: counted as it arrives


def test_cors_is_off_unless_origins_are_listed(kb_home: Path) -> None:
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    with serving(kb_home) as live:
        answer = httpx.options(f"{live.url}/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    with serving(kb_home, serve_cors_origins="http://localhost:3000") as live:
        answer = httpx.options(f"{live.url}/v1/chat/completions", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"


# --- the fair queue -----------------------------------------------------------------------


def _ask_in_thread(url: str, results: list[Any], timeout: float = 30) -> threading.Thread:
    def ask() -> None:
        body = {"model": "scripted-fake", "messages": [{"role": "user", "content": "Hi"}]}
        try:
            results.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout))
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    return thread


def _until(condition: Any, seconds: float = 10) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "condition not reached"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_full_queue_answers_429_with_retry_after(kb_home: Path) -> None:
    with serving(kb_home, "one two three", "four five six", pause=0.3, queue=1) as live:
        results: list[Any] = []
        first = _ask_in_thread(live.url, results)
        _until(lambda: live.health()["queue"]["running"])
        second = _ask_in_thread(live.url, results)
        _until(lambda: live.health()["queue"]["waiting"] == 1)
        with pytest.raises(openai.RateLimitError) as caught:
            live.client().chat.completions.create(
                model="kb/notes", messages=[{"role": "user", "content": "tea?"}]
            )
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        first.join(30)
        second.join(30)
        answers = sorted(r.json()["choices"][0]["message"]["content"] for r in results)
        assert answers == ["four five six", "one two three"]  # both waited, in order


def test_a_client_that_disconnects_frees_the_model(kb_home: Path) -> None:
    long = " ".join(f"word{i}" for i in range(200))  # 200 pieces x 0.1 s: 20 s if not stopped
    with serving(kb_home, long, "next answer", pause=0.1, queue=2) as live:
        body = {"model": "scripted-fake", "stream": True,
                "messages": [{"role": "user", "content": "Talk"}]}  # fmt: skip
        with httpx.Client(timeout=10) as http:
            with http.stream("POST", f"{live.url}/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                events = [next(lines) for _ in range(6)]
                assert sum(e.startswith("data: ") for e in events) >= 3
                waiting: list[Any] = []
                gone = _ask_in_thread(live.url, waiting, timeout=0.5)  # leaves while waiting
                gone.join(5)
                assert isinstance(waiting[0], httpx.TimeoutException)
                _until(lambda: live.health()["queue"]["waiting"] == 0, 3)
            assert _until(lambda: not live.health()["queue"]["running"], 3) < 2
        started = time.monotonic()
        reply = live.client().chat.completions.create(
            model="scripted-fake", messages=[{"role": "user", "content": "Again"}]
        )
        assert reply.choices[0].message.content == "next answer"
        assert time.monotonic() - started < 3
        assert len(live.model.calls) == 2  # the request that left while waiting never ran


# --- the real model -----------------------------------------------------------------------


def test_real_smollm2_streams_through_kb_serve_and_stops_when_the_client_leaves(
    kb_home: Path, assistant: Assistant, tmp_path: Path
) -> None:
    (tmp_path / "tea.txt").write_text(DOCS["tea.txt"], encoding="utf-8")
    assistant.ingest([tmp_path / "tea.txt"], kb="notes")
    assistant.close()
    port = free_port()
    env = {
        **os.environ,
        "KB_CHAT_BACKEND": "llama-cpp",
        "KB_MAX_TOKENS": "1500",
        "KB_TEMPERATURE": "0",
        "KB_SEED": "1",
        "KB_ABSTAIN_MIN_DENSE": "0",
    }
    command = python_module("kb_assistant.cli", "serve", "--port", str(port))
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _up(url), 30)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        pieces: list[str] = []
        with client.chat.completions.create(
            model="kb/notes", stream=True, messages=[{"role": "user", "content": ESSAY}]
        ) as stream:
            for chunk in stream:
                pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
                if len([p for p in pieces if p]) == 3:
                    break  # and leave: closing the stream disconnects
        assert "".join(pieces).strip()
        # Left alone, this answer runs to all 1500 tokens (about 40 s on 2 idle cores);
        # cancelled with the stream, the model is free at once (0.07 s measured on idle cores;
        # the bound leaves room for a loaded machine and still needs the cancel).
        assert _until(lambda: not httpx.get(f"{url}/health").json()["queue"]["running"], 20) < 15
        started = time.monotonic()
        chat_model = client.models.list().data[-1].id
        hi = client.chat.completions.create(
            model=chat_model, stream=True, messages=[{"role": "user", "content": "Say hi."}]
        )
        chunks: list[Any] = []
        for chunk in hi:
            if not any(c.choices and c.choices[0].delta.content for c in chunks):
                # the worker took the next prompt at once, not after the essay's 1500 tokens
                assert time.monotonic() - started < 15
            chunks.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(chunks) > 3 and text.strip()
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        stop(server, 15)
        if server.stderr is not None:
            server.stderr.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_queue_serves_in_arrival_order_and_refuses_when_full() -> None:
    queue = ModelQueue(2, default_seconds=3.0)
    first = queue.join()
    assert first.ready and queue.running
    later = [queue.join(), queue.join()]
    with pytest.raises(ModelBusy) as caught:
        queue.join()
    assert caught.value.retry_after == 9  # three jobs ahead x 3 s (nothing timed yet)
    order: list[int] = []
    for i, ticket in enumerate(later):
        ticket.when_ready(functools.partial(order.append, i))
    later[0].leave()  # a waiter that gives up leaves the line
    first.leave()
    assert order == [1] and later[1].ready and queue.waiting == 0
    later[1].leave()
    assert not queue.running and queue.retry_after() >= 1


def test_keys_file_is_reread_and_verification_is_constant_time(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / KEYS_FILE)
    key = store.add("ci")
    other = KeyStore(tmp_path / KEYS_FILE)  # another process: the CLI
    assert other.verify(key) == "ci" and store.verify(key) == "ci"
    other.revoke("ci")
    assert store.verify(key) is None and not store.any()


def test_beyond_loopback_revoking_the_last_key_locks_the_server(kb_home: Path) -> None:
    store = KeyStore(kb_home / KEYS_FILE)
    key = store.add("ci")
    with serving(kb_home, serve_host="0.0.0.0") as live:
        assert {m.id for m in live.client(key).models.list()} >= {"kb/notes"}
        # bound beyond loopback, any Host is this server's
        assert httpx.get(f"{live.url}/kbs", headers={"Host": "kb.example:8765",
                         "Authorization": f"Bearer {key}"}).status_code == 200  # fmt: skip
        revoked = CliRunner().invoke(main, ["serve", "keys", "revoke", "ci"])
        assert revoked.exit_code == 0 and "refuses every request" in revoked.output
        locked = httpx.get(f"{live.url}/kbs")
        assert locked.status_code == 401
        assert locked.json()["error"]["message"] == (
            "no API keys exist; add one with 'kb serve keys add NAME'"
        )
        with pytest.raises(openai.AuthenticationError):
            live.client(key).models.list()
        assert httpx.get(f"{live.url}/health").status_code == 200
    with serving(kb_home) as live:  # on loopback, no key: open to this machine
        assert httpx.get(f"{live.url}/kbs").status_code == 200


def test_web_pages_and_foreign_hosts_are_refused(live: Live, tmp_path: Path) -> None:
    http = httpx.Client(base_url=live.url)
    upload = {"files": ("evil.txt", b"Injected text from a web page.")}
    evil = http.post("/kbs/notes/documents", files=upload,
                     headers={"Origin": "http://evil.example"})  # fmt: skip
    assert evil.status_code == 403
    error = evil.json()["error"]
    assert error["code"] == "origin_not_allowed" and "serve_cors_origins" in error["message"]
    assert [d["name"] for d in http.get("/kbs/notes/documents").json()] == ["apt.txt", "tea.txt"]
    rebound = http.get("/kbs", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "host_not_allowed"
    port = live.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "localhost"):
        assert http.get("/kbs", headers={"Host": host}).status_code == 200, host
    # the server's own pages (/docs "Try it out") send their own origin
    same = http.post("/kbs/notes/search", json={"query": "tea"}, headers={"Origin": live.url})
    assert same.status_code == 200 and same.json()
    assert http.get("/health", headers={"Origin": "http://evil.example"}).status_code == 403


def test_listed_origins_pass_the_origin_check(kb_home: Path) -> None:
    with serving(kb_home, serve_cors_origins="http://localhost:3000") as live:
        ok = httpx.get(f"{live.url}/kbs", headers={"Origin": "http://localhost:3000"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = httpx.get(f"{live.url}/kbs", headers={"Origin": "http://localhost:4000"})
        assert other.status_code == 403


def test_keys_are_hmacs_with_a_scheme_and_wrong_keys_cost_nothing(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / KEYS_FILE)
    key = store.add("ci")
    entry = json.loads((tmp_path / KEYS_FILE).read_text())["keys"][0]
    assert entry["scheme"] == "hmac-sha256" and "scrypt" not in entry
    started = time.perf_counter()
    assert all(store.verify(f"kb-wrong{i}") is None for i in range(2000))
    assert time.perf_counter() - started < 1.0  # scrypt took tens of ms per check
    assert store.verify(key) == "ci"
    data = json.loads((tmp_path / KEYS_FILE).read_text())
    data["keys"][0]["scheme"] = "scrypt"
    (tmp_path / KEYS_FILE).write_text(json.dumps(data))
    with pytest.raises(ApiKeyError, match="another version"):
        KeyStore(tmp_path / KEYS_FILE).verify(key)


def test_a_keys_file_replaced_with_the_same_size_and_mtime_is_reread(tmp_path: Path) -> None:
    path = tmp_path / KEYS_FILE
    store = KeyStore(path)
    old_key = store.add("ci")
    new_key = KeyStore(tmp_path / "other.json").add("ci")
    assert store.verify(old_key) == "ci"
    before = path.stat()
    other = json.loads((tmp_path / "other.json").read_text())["keys"][0]
    data = json.loads(path.read_text())
    data["keys"][0].update(salt=other["salt"], hash=other["hash"])
    replacement = tmp_path / "replacement.json"
    replacement.write_text(json.dumps(data, indent=2))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert store.verify(new_key) == "ci" and store.verify(old_key) is None


def test_a_damaged_keys_file_answers_503_with_its_message(live: Live, kb_home: Path) -> None:
    (kb_home / KEYS_FILE).write_text("{not json")
    answer = httpx.get(f"{live.url}/kbs")
    assert answer.status_code == 503
    assert "cannot read the API keys" in answer.json()["error"]["message"]
    assert httpx.get(f"{live.url}/health").status_code == 200


def test_asking_in_a_conversation_needs_its_exact_id_and_knowledge_base(live: Live) -> None:
    http = httpx.Client(base_url=live.url)
    live.assistant.create_kb("other")
    mine = http.post("/kbs/notes/conversations").json()["conversation"]
    theirs = http.post("/kbs/other/conversations").json()["conversation"]
    for wrong in ("abc", mine[:6], mine + "0", "%"):
        bad = http.post("/kbs/notes/ask", json={"question": "tea?", "conversation": wrong})
        assert bad.status_code == 400 and "not a conversation id" in bad.json()["error"]["message"]
    crossed = http.post("/kbs/notes/ask", json={"question": "tea?", "conversation": theirs})
    assert crossed.status_code == 400
    assert "belongs to knowledge base 'other', not 'notes'" in crossed.json()["error"]["message"]
    unknown = http.post("/kbs/notes/ask", json={"question": "tea?", "conversation": "0" * 12})
    assert unknown.status_code == 404
    ok = http.post("/kbs/notes/ask", json={"question": "How long does green tea steep?",
                                            "conversation": mine})  # fmt: skip
    assert ok.status_code == 200 and "two minutes" in ok.json()["answer"]
    assert live.assistant.conversations.get(mine).turns == 1
    assert live.assistant.conversations.get(theirs).turns == 0
    assert not live.model.calls[1:]  # only the good question reached the model


class _FailingModel(ScriptedChatModel):
    """Streams two pieces, then fails as a bug would."""

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[Any]:  # fmt: skip
        for n, chunk in enumerate(super()._stream(messages, stop, run_manager, **kwargs)):
            if n == 2:
                raise RuntimeError("the model broke")
            yield chunk


def test_an_unexpected_error_mid_stream_ends_the_stream_cleanly(kb_home: Path) -> None:
    model = _FailingModel(responses=["one two three four five"])
    with serving(kb_home, model=model) as live:
        body = {"model": "scripted-fake", "stream": True,
                "messages": [{"role": "user", "content": "Talk"}]}  # fmt: skip
        done = subprocess.run(
            [CURL, "-sN", f"{live.url}/v1/chat/completions", "-H",
             "Content-Type: application/json", "-d", json.dumps(body)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        events = [e for e in done.stdout.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][6:])["error"]
        assert error == {"message": "internal error: RuntimeError", "type": "server_error",
                         "param": None, "code": "internal_error"}  # fmt: skip
        pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-2]]
        assert "".join(pieces) == "one two "
        assert _until(lambda: not live.health()["queue"]["running"], 3) < 2


def test_knowledge_base_and_config_errors_are_server_errors() -> None:
    cases = [
        (CorruptKnowledgeBase("index.faiss is damaged"), 503, "knowledge_base_unavailable"),
        (KnowledgeBaseError("the vector store cannot be reached"), 503,
         "knowledge_base_unavailable"),
        (ConfigError("milvus_uri is not a URI"), 500, "server_misconfigured"),
        (InvalidName("'../x' cannot name a knowledge base"), 400, "invalid_name"),
        (KBError("the question is empty"), 400, "KBError"),
    ]  # fmt: skip
    for exc, status, code in cases:
        response = kb_error_response(exc)
        error = json.loads(bytes(response.body))["error"]
        assert (response.status_code, error["code"], error["message"]) == (status, code, str(exc))
        assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")


def test_shutdown_waits_for_ingest_jobs(assistant: Assistant, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    paths = {}
    for i in range(5):
        path = folder / f"doc{i}.txt"
        path.write_text(f"Document {i} is about topic number {i}.", encoding="utf-8")
        paths[path] = path.name
    board = JobBoard(assistant)
    job = board.start("late", paths)
    _finish_jobs(board, 30)
    assert job.state == "done" and not board.running()
    assert len(assistant.documents("late")) == 5


class _SlowAgentModel(ScriptedChatModel):
    """Scripted tool calls, each decided in 0.3 s."""

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return super()._generate(*args, **kwargs)


def test_an_agent_whose_client_leaves_stops_between_steps(kb_home: Path) -> None:
    searches: list[str | AIMessage] = [
        AIMessage(content="", tool_calls=[{"name": "search_documents", "id": f"call_{i}",
                                           "args": {"query": f"tea number {i}"}}])
        for i in range(15)
    ]  # fmt: skip
    model = _SlowAgentModel(native_tools=True, responses=[*searches, AIMessage(content="Done.")])
    with serving(kb_home, model=model, agent_max_steps=30) as live:
        with pytest.raises(httpx.TimeoutException):  # 15 steps x 0.3 s: leaves after 1 s
            httpx.post(f"{live.url}/kbs/notes/agent", json={"question": "Tea?"}, timeout=1.0)
        assert _until(lambda: not live.health()["queue"]["running"], 5) < 2
        time.sleep(0.5)
        assert len(model.calls) <= 6 and len(model.responses) >= 9  # stopped, not run out
