"""Guards over the whole tree and suite: no dangerous constructs in the code, no network."""

from __future__ import annotations

import ast
import re
import socket
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}
# Text that must not appear in code: each one has been the hole in a peer's product.
FORBIDDEN = {
    "allow_dangerous_deserialization=True": "FAISS.load_local unpickles its docstore",
    "allow_dangerous_code=True": "lets LangChain agents run model-written Python",
    "PythonREPL": "a Python REPL tool runs model-written code",
    "PythonAstREPLTool": "a Python REPL tool runs model-written code",
    "pickle.load": "unpickling runs code from the file",
    "unsafe_allow_html=True": "renders document or model text as HTML",
    "enableXsrfProtection = false": "turns off Streamlit's XSRF protection",
}
ALLOWED: dict[str, set[str]] = {  # file (relative) -> forbidden texts it may hold
    "tests/test_planted_pickle.py": {"pickle.load"},  # proves its payload would run
}


def sources() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if path.is_file() and not parts & SKIP and path.suffix in {".py", ".toml", ".cfg"}:
            files.append(path)
    return files


def test_the_walk_covers_the_product() -> None:
    names = {str(p.relative_to(ROOT)) for p in sources()}
    assert {"app.py", "assistant.py", "chains/rag.py", ".streamlit/config.toml"} <= names


def violations(name: str, text: str) -> list[str]:
    """The forbidden texts in one file, spacing around ``=`` ignored."""
    flat = re.sub(r"\s*=\s*", "=", text)
    return [
        f"{name}: {needle} ({why})"
        for needle, why in FORBIDDEN.items()
        if re.sub(r"\s*=\s*", "=", needle) in flat and needle not in ALLOWED.get(name, ())
    ]


def exec_calls(name: str, source: str) -> list[str]:
    """Calls of the built-in ``exec``/``eval`` in Python source."""
    return [
        f"{name}:{node.lineno} {node.func.id}()"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"exec", "eval"}
    ]


def test_the_guards_find_what_they_look_for() -> None:
    planted = "store = FAISS.load_local(path, emb, allow_dangerous_deserialization = True)"
    assert violations("x.py", planted) == [
        "x.py: allow_dangerous_deserialization=True (FAISS.load_local unpickles its docstore)"
    ]
    assert exec_calls("x.py", "value = eval(row['formula'])\nexec(code)\n") == [
        "x.py:1 eval()",
        "x.py:2 exec()",
    ]
    assert exec_calls("x.py", "model.eval()\n") == []  # a method called eval is fine


def test_no_dangerous_construct_appears_in_the_code() -> None:
    found = []
    for path in sources():
        if path != Path(__file__):
            text = path.read_text(encoding="utf-8", errors="replace")
            found += violations(str(path.relative_to(ROOT)), text)
    assert found == []


def test_no_exec_or_eval_is_called() -> None:
    calls = []
    for path in sources():
        if path.suffix == ".py":
            source = path.read_text(encoding="utf-8")
            calls += exec_calls(str(path.relative_to(ROOT)), source)
    assert calls == []


def test_the_app_keeps_xsrf_on_and_listens_on_loopback() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["address"] == "127.0.0.1"


def test_a_connection_off_the_machine_fails_in_every_test(offline: list[object]) -> None:
    before = len(offline)
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("203.0.113.9", 80), timeout=1)
    assert offline[before:] == [("203.0.113.9", 80)]


def test_loopback_connections_still_work() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        accepted.append(conn.recv(5))
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"hello")
    thread.join(5)
    server.close()
    assert accepted == [b"hello"]
