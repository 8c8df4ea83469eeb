"""A chat model on an OpenAI-compatible server: a real llama-cpp-python server
(``python -m llama_cpp.server``) on loopback, serving the embedded SmolLM2 GGUF, driven through
``chat_model = "openai:http://127.0.0.1:PORT/v1#MODEL"``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from kb_assistant.assistant import build_assistant
from kb_assistant.cli import main
from kb_assistant.errors import ContextOverflow, ModelError
from kb_assistant.models.chat import ScriptedChatModel
from kb_assistant.models.factory import build_chat_model
from kb_assistant.models.llm import LocalLLM, resolve_chat_model
from kb_assistant.models.protocol import Generation, Sampling
from kb_assistant.models.remote import RemoteChatModel, openai_messages, tool_call_message
from kb_assistant.models.remote_server import (
    RemoteEndpoint,
    RemoteServer,
    estimate_tokens,
    parse_remote,
)
from kb_assistant.processes import stop
from kb_assistant.settings import Settings, load_settings
from tests.files import CHINOOK
from tests.ports import free_port

MESSAGES = [SystemMessage("You answer briefly."), HumanMessage("Name one Debian package manager.")]


class Server:
    """A running llama_cpp.server: its API base URL and its log."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self.value = f"openai:{self.url}"  # the chat_model setting (no #name: the listed one)


@contextmanager
def _serve(folder: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    log = folder / "server.log"
    command = [
        sys.executable, "-I", "-m", "llama_cpp.server",
        "--model", str(resolve_chat_model("SmolLM2-135M-Instruct")), "--model_alias", "smol",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
        "--verbose", "False", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "llama_cpp.server did not start in 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield Server(port, log)
    finally:
        stop(process, 10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _serve(tmp_path_factory.mktemp("llama-server")) as running:
        yield running


def _settings(kb_home: Path, chat_model: str, **overrides: object) -> Settings:
    return load_settings(kb_home, chat_backend="llama-cpp", chat_model=chat_model, **overrides)


@pytest.fixture
def model(kb_home: Path, server: Server) -> Iterator[RemoteChatModel]:
    built = build_chat_model(_settings(kb_home, server.value, max_tokens=32, seed=1))
    assert isinstance(built, RemoteChatModel)
    yield built
    built.close()


# --- the setting ------------------------------------------------------------------------


def test_the_setting_names_a_server_and_optionally_its_model() -> None:
    assert parse_remote("openai:http://gpu:8080/v1#qwen2.5:7b") == RemoteEndpoint(
        "http://gpu:8080/v1", "qwen2.5:7b"
    )
    assert parse_remote("openai:https://h/v1/") == RemoteEndpoint("https://h/v1", None)
    assert RemoteEndpoint("http://h:8000/v1").root == "http://h:8000"
    for bad in ("openai:localhost", "openai:localhost:8080", "openai:http://", "openai:ftp://h",
                "openai:http://h:port/v1"):  # fmt: skip
        with pytest.raises(ModelError, match=r"openai:http://HOST:PORT/v1#MODEL"):
            parse_remote(bad)
    with pytest.raises(ModelError, match="KB_CHAT_API_KEY") as refused:
        parse_remote("openai:http://me:s3cret@gpu:8080/v1")
    assert "s3cret" not in str(refused.value)


def test_a_malformed_server_value_is_a_clear_error_in_kb_ask(
    kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_CHAT_BACKEND", "llama-cpp")
    monkeypatch.setenv("KB_CHAT_MODEL", "openai:localhost")
    (kb_home.parent / "doc.md").write_text("Use apt install NAME to install a package.", "utf-8")
    CliRunner().invoke(main, ["ingest", str(kb_home.parent / "doc.md")], catch_exceptions=False)
    result = CliRunner().invoke(main, ["ask", "How do I install a package?"])
    assert result.exit_code == 1 and "openai:http://HOST:PORT/v1#MODEL" in result.stderr
    assert "Traceback" not in result.output


def test_the_fake_backend_still_wins(kb_home: Path) -> None:
    settings = load_settings(kb_home, chat_backend="fake", chat_model="openai:http://h:1/v1")
    assert isinstance(build_chat_model(settings), ScriptedChatModel)


# --- the protocol, against the real server ------------------------------------------------


def test_a_reply_streams_with_its_statistics(model: RemoteChatModel, server: Server) -> None:
    stats = Generation()
    text = "".join(model.stream_text(MESSAGES, stats=stats, on_wait=lambda: None))
    assert text.strip() and stats.completion_tokens > 0
    assert stats.prompt_tokens > 20 and stats.time_to_first_token is not None
    assert 0 < stats.time_to_first_token <= stats.seconds and stats.stop_reason in (
        "stop",
        "length",
    )
    assert model.model_name == f"openai:smol@127.0.0.1:{server.port}"  # the listed alias
    assert model.parameter_count is None  # llama_cpp.server does not say; chains cope
    assert model.invoke("Say hi").content


def test_tokens_are_counted_by_the_servers_tokenizer(model: RemoteChatModel) -> None:
    local = LocalLLM(resolve_chat_model("SmolLM2-135M-Instruct"), context_cap=2048, threads=1)
    try:
        texts = ["Hello world, how are you?", "apt install nginx\n\n# then: systemctl start"]
        for text in texts:
            assert model.get_num_tokens(text) == local.count_tokens(text)
        exact = local.count_prompt([
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name one Debian package manager."},
        ])  # fmt: skip
    finally:
        local.close()
    counted = model.get_num_tokens_from_messages(MESSAGES)
    assert exact <= counted <= exact + 24  # the template guessed generously, never short


def test_the_estimate_without_a_tokenizer_is_never_short(model: RemoteChatModel) -> None:
    samples = [
        "The quick brown fox jumps over the lazy dog, 12345 times!",
        "def f(x):\n    return {'a': [1, 2, 3]}  # a comment\n",
        "Installation: run `sudo apt-get install -y nginx` and then open http://localhost:80/.",
        "Привет, как дела? Всё хорошо.",
    ]
    for text in samples:
        exact = model.get_num_tokens(text)
        assert exact <= estimate_tokens(text) <= 2 * exact + 4, text


def test_the_context_window_is_learned_from_a_refusal(kb_home: Path, server: Server) -> None:
    model = build_chat_model(_settings(kb_home, server.value, context_size=4096))
    # llama_cpp.server does not tell its n_ctx: the setting stands in, until a prompt too
    # long is refused naming the real window (the stream just ends; a one-token retry says why).
    assert model.context_window == 4096
    with pytest.raises(ContextOverflow, match="2048 tokens"):
        "".join(model.stream_text([HumanMessage("word " * 2500)], stats=Generation()))
    assert model.context_window == 2048
    model.close()


def test_forms_are_filled_under_the_servers_schema_and_tools_are_not_claimed(
    model: RemoteChatModel,
) -> None:
    assert model.capabilities.fill_form and not model.capabilities.native_tools
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
              "required": ["colour"]}  # fmt: skip
    reply = model.fill_form([{"role": "user", "content": "Pick a colour."}], schema, 24)
    assert json.loads(reply)["colour"] in ("red", "green", "blue")


def test_closing_the_stream_stops_the_servers_generation(
    model: RemoteChatModel, server: Server
) -> None:
    long = model.model_copy(update={"sampling": Sampling(max_tokens=512)})
    stats = Generation()
    pieces = long.stream_text([HumanMessage("Write a long story about a dog.")], stats=stats)
    assert isinstance(pieces, Generator)
    next(pieces), next(pieces)
    before = server.log.read_text(errors="replace").count("Disconnected from client")
    pieces.close()
    assert stats.stop_reason == "cancelled" and stats.completion_tokens == 2
    deadline = time.monotonic() + 10
    while server.log.read_text(errors="replace").count("Disconnected from client") == before:
        assert time.monotonic() < deadline, "the server kept generating for a closed stream"
        time.sleep(0.1)


def test_bound_tools_go_to_the_server_and_its_calls_come_back(
    kb_home: Path, tmp_path: Path
) -> None:
    @tool
    def get_time(city: str) -> str:
        """The time in a city."""
        return "12:00"

    # This server's "auto" tool choice ignores max_tokens (it may write 2048 tokens), so only
    # forced calls are asked of it here; native_tools is probed with "auto" elsewhere.
    with _serve(tmp_path, "--chat_format", "chatml-function-calling") as calling:
        model = build_chat_model(_settings(kb_home, calling.value, max_tokens=32))
        bound = model.bind_tools([get_time], tool_choice="get_time")
        forced = bound.invoke("Time in Paris?")
        assert [c["name"] for c in forced.tool_calls] == ["get_time"]
        result = ToolMessage("12:00", tool_call_id=forced.tool_calls[0]["id"])
        history = [HumanMessage("Time in Paris?"), forced, result]  # sent back in OpenAI form
        assert [c["name"] for c in bound.invoke(history).tool_calls] == ["get_time"]
        plain = model.get_num_tokens_from_messages(history)
        assert model.get_num_tokens_from_messages(history, tools=[get_time]) > plain


def test_tool_calls_and_results_travel_in_openai_form() -> None:
    call = {"name": "run_sql", "args": {"sql": "SELECT 1"}, "id": "c1"}
    sent = openai_messages([
        SystemMessage("s"), HumanMessage("q"), AIMessage("", tool_calls=[call]),
        ToolMessage("1", tool_call_id="c1"),
    ])  # fmt: skip
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"] == [{"id": "c1", "type": "function", "function": {
        "name": "run_sql", "arguments": '{"sql": "SELECT 1"}'}}]  # fmt: skip
    assert sent[3] == {"role": "tool", "tool_call_id": "c1", "content": "1"}
    function = {"name": "run_sql", "arguments": '{"sql": "SELECT 2"}'}
    parsed = tool_call_message({"content": None, "tool_calls": [{"id": "x", "function": function}]})
    assert parsed.tool_calls[0]["args"] == {"sql": "SELECT 2"}
    # a server that left the model's Hermes-style call in the text: parsed here
    texted = tool_call_message({"content": '<tool_call>{"name": "f", "arguments": {}}</tool_call>'})
    assert [c["name"] for c in texted.tool_calls] == ["f"]


# --- the faces ----------------------------------------------------------------------------


def test_kb_ask_answers_through_the_server(
    kb_home: Path, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_CHAT_BACKEND", "llama-cpp")  # the default backend: the prefix decides
    monkeypatch.setenv("KB_CHAT_MODEL", f"openai:{server.url}#smol")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "apt.md").write_text(
        "# Installing\n\nUse apt install NAME to install a package.", "utf-8"
    )
    runner = CliRunner()
    runner.invoke(main, ["ingest", str(docs)], catch_exceptions=False)
    result = runner.invoke(
        main, ["ask", "How do I install a package?", "--json", "--seed", "3", "--max-tokens", "48"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"answer", "refused", "citations", "sources", "trace"} <= set(data)
    assert data["answer"].strip()
    trace = data["trace"]
    assert trace["model"].startswith("openai:smol@127.0.0.1")
    if not data["refused"]:
        assert trace["prompt_tokens"] > 50 and trace["completion_tokens"] > 0
        assert [s["source"].endswith("apt.md") for s in data["sources"]] == [True]


def test_the_agent_answers_through_the_server(kb_home: Path, server: Server) -> None:
    assistant = build_assistant(_settings(kb_home, server.value))
    try:
        assistant.connect_database(f"sqlite:///{CHINOOK}", name="chinook")
        result = assistant.agent("How many invoices were billed to customers in the USA?")
    finally:
        assistant.close()
    assert result.answer.strip() and result.sql  # forms filled under the server's schema
    assert result.rows == [[91]]


def test_models_use_list_and_doctor_take_a_server(
    kb_home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KB_CHAT_MODEL")  # the saved setting decides
    runner = CliRunner()
    value = f"openai:{server.url}#smol"
    used = runner.invoke(main, ["models", "use", value, "--json"], catch_exceptions=False)
    assert used.exit_code == 0 and json.loads(used.stdout) == {"chat_model": value}
    rows = json.loads(runner.invoke(main, ["models", "list", "--json"]).stdout)
    assert [r["name"] for r in rows if r["in_use"]] == [value]
    doctor = runner.invoke(main, ["doctor", "--json"])
    report = json.loads(doctor.stdout)
    assert doctor.exit_code == 0 and report["generation_check"]["ok"]
    assert report["served_model"] == "smol" and report["fills_forms"] is True
    assert report["token_counts"].endswith("/extras/tokenize/count")
    refused = runner.invoke(main, ["models", "use", "openai:http://127.0.0.1:9/v1"])
    assert refused.exit_code == 1 and "cannot reach the chat server" in refused.stderr


# --- failures -----------------------------------------------------------------------------


def test_a_closed_port_is_a_model_error_naming_the_url(kb_home: Path) -> None:
    port = free_port()
    model = build_chat_model(_settings(kb_home, f"openai:http://127.0.0.1:{port}/v1#x"))
    with pytest.raises(
        ModelError, match=rf"cannot reach the chat server at http://127\.0\.0\.1:{port}/v1"
    ):
        "".join(model.stream_text(MESSAGES, stats=Generation()))


def test_a_server_that_never_answers_times_out_with_a_clear_error() -> None:
    with socket.socket() as silent:  # listens, accepts nothing, answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        remote = RemoteServer(RemoteEndpoint(url, "m"), timeout=httpx.Timeout(0.5))
        with pytest.raises(
            ModelError, match=rf"chat server at {url}/models did not answer in time"
        ):
            remote.facts()
        remote.close()


def test_a_server_root_that_is_not_the_api_says_so(kb_home: Path, server: Server) -> None:
    root = server.url.removesuffix("/v1")
    model = build_chat_model(_settings(kb_home, f"openai:{root}#smol"))
    with pytest.raises(
        ModelError, match=r"HTTP 404.*OpenAI-compatible API \(usually ending in /v1\)"
    ):
        model.get_num_tokens("hello")


def test_a_server_wanting_a_key_names_the_setting(
    kb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _serve(tmp_path, "--api_key", "s3cret") as keyed:
        value = f"openai:{keyed.url}"
        with pytest.raises(ModelError, match=r"HTTP 401.*set KB_CHAT_API_KEY"):
            build_chat_model(_settings(kb_home, value)).get_num_tokens("hello")
        monkeypatch.setenv("KB_CHAT_API_KEY", "wrong")
        with pytest.raises(ModelError, match=r"HTTP 401.*KB_CHAT_API_KEY.*was refused"):
            build_chat_model(_settings(kb_home, value)).get_num_tokens("hello")
        monkeypatch.setenv("KB_CHAT_API_KEY", "s3cret")
        model = build_chat_model(_settings(kb_home, value, max_tokens=16))
        assert model.get_num_tokens("Hello world") == 2
        assert "".join(model.stream_text(MESSAGES, stats=Generation()))


def test_what_llama_cpp_and_vllm_say_about_themselves_is_read() -> None:
    """The shapes of llama.cpp's ``/props`` and vLLM's model list and tokenizer, as their
    documentation gives them (neither server is installed here), through httpx's mock
    transport."""
    answers = {
        ("llama", "/v1/models"): {"data": [{"id": "q", "meta": {"n_params": 1_540_000_000}}]},
        ("llama", "/props"): {"default_generation_settings": {"n_ctx": 8192}},
        ("llama", "/tokenize"): {"tokens": [1, 2, 3]},
        ("vllm", "/v1/models"): {"data": [{"id": "Qwen/Q", "max_model_len": 32768}]},
        ("vllm", "/tokenize"): {"count": 5, "max_model_len": 32768, "tokens": [1, 2, 3, 4, 5]},
    }
    sent: list[tuple[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        key = (request.url.host, request.url.path)
        sent.append((request.url.path, json.loads(request.content) if request.content else None))
        return httpx.Response(200, json=answers[key]) if key in answers else httpx.Response(404)

    for host, context, params, count in (("llama", 8192, 1.54e9, 3), ("vllm", 32768, None, 5)):
        remote = RemoteServer(RemoteEndpoint(f"http://{host}/v1"))
        remote._client = httpx.Client(transport=httpx.MockTransport(answer))
        facts = remote.facts()
        assert (facts.context, facts.parameters) == (context, params)
        assert remote.context(4096) == context and remote.count("three words here") == count
    assert ("/tokenize", {"content": "Hello", "add_special": False}) in sent
    assert (
        "/tokenize",
        {"model": "Qwen/Q", "prompt": "Hello", "add_special_tokens": False},
    ) in sent


def test_the_settings_page_saves_a_server_address_as_typed(
    kb_home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("KB_CHAT_MODEL")
    value = f"{server.value}#smol"
    st.cache_resource.clear()  # AppTest shares the process: no Assistant from another test
    try:
        at = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"), default_timeout=30)
        at.run().switch_page("ui/pages/settings_page.py").run()
        next(t for t in at.text_input if "GGUF" in t.label).input(value).run()
        assert not at.exception and not at.error  # no memory estimate asked of a server
        next(b for b in at.button if b.label == "Save settings").click().run()
        assert not at.exception and at.success
    finally:
        st.cache_resource.clear()
    assert load_settings(kb_home).chat_model == value
