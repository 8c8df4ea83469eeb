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
SKIP = {".venv", ".git", ".typecheck", "node_modules", "build", "dist", "__pycache__"}
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


# --- layers ---------------------------------------------------------------------------------

# Imports point one way: faces -> assistant -> chains/ingest -> vectorstore/models -> loaders
# -> errors/settings/prompts. A module may import its own layer or any layer below.
LAYERS: dict[str, int] = {
    "app": 5, "cli": 5, "ui": 5, "api": 5, "eval": 5,  # faces (eval: `kb eval` through them)
    "assistant": 4,
    "chains": 3, "ingest": 3, "ingest_ray": 3, "reindex": 3, "graph_build": 3,
    "vectorstore": 2, "models": 2, "uploads": 2,  # storage and models
    "loaders": 1,
    "errors": 0, "settings": 0, "prompts": 0, "processes": 0, "__init__": 0,
}  # fmt: skip
PACKAGE_PARTS = set(LAYERS) - {"__init__"}


def product_modules() -> list[tuple[str, Path]]:
    """(top-level part, file) for every module of the installed package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if set(rel.parts) & SKIP or rel.parts[0] in {"tests", "bench", "scripts", "docs"}:
            continue
        found.append((rel.parts[0] if len(rel.parts) > 1 else rel.stem, path))
    return found


def imported_parts(path: Path) -> list[tuple[int, str]]:
    """(line, part of kb_assistant) for each import in a file; bare top-level names of the
    package's parts (``import models``) are reported as ``bare:<name>``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = (
                [node.module]
                if node.module != "kb_assistant"
                else [f"kb_assistant.{a.name}" for a in node.names]
            )
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            head, _, rest = name.partition(".")
            if head == "kb_assistant" and rest:
                found.append((node.lineno, rest.split(".")[0]))
            elif head in PACKAGE_PARTS:
                found.append((node.lineno, f"bare:{head}"))
    return found


def test_imports_point_down_the_layers() -> None:
    modules = product_modules()
    assert {part for part, _ in modules} - {"__init__"} >= {"assistant", "chains", "models"}
    wrong = []
    for part, path in modules:
        assert part in LAYERS, f"{part}: a new top-level part needs a layer in LAYERS"
        for line, target in imported_parts(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.startswith("bare:"):
                wrong.append(f"{where} imports '{target[5:]}' bare (use kb_assistant.{target[5:]})")
            elif LAYERS[target] > LAYERS[part]:
                wrong.append(f"{where}: {part} (layer {LAYERS[part]}) imports {target} "
                             f"(layer {LAYERS[target]})")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_catches_an_import_that_runs_back_up(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("from kb_assistant.chains.rag import RagChain\nimport settings\n")
    assert imported_parts(planted) == [(1, "chains"), (2, "bare:settings")]
    assert LAYERS["chains"] > LAYERS["vectorstore"]  # so vectorstore importing it is caught
