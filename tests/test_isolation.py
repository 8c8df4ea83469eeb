"""One installed package, and nothing from the user's folder runs.

A folder holding its own ``loaders/sandbox.py``, ``models/onnx_embeddings.py``, ``settings.py``,
``chains/`` and ``kb_assistant/`` (each writing a marker file when imported) and its own
``.streamlit/config.toml``: ``kb ingest .``, ``kb search``, ``kb ask`` and ``kb app`` run
from it start every child (parser worker, ONNX export, model worker, Streamlit) isolated, by
the installed module's name, and no marker appears. And kb-assistant installs beside another
distribution that provides top-level ``models`` and ``eval``: both import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from kb_assistant.processes import PACKAGE_DIR
from tests.browser import browser_missing, chromium
from tests.ports import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
KB = str(Path(sys.executable).with_name("kb"))
PLANTED = [
    "loaders/__init__.py", "loaders/sandbox.py", "models/__init__.py",
    "models/onnx_embeddings.py", "settings.py", "chains/__init__.py", "kb_assistant/__init__.py",
    "errors.py", "processes.py", "app.py",
]  # fmt: skip


def plant(folder: Path, markers: Path) -> None:
    """Modules that leave a marker file (named after themselves) when imported or run."""
    for name in PLANTED:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        flag = markers / name.replace("/", "_")
        path.write_text(f"open({str(flag)!r}, 'w').close()\n", encoding="utf-8")
    (folder / ".streamlit").mkdir()
    # Read, it would move every page (and the health check) under /planted.
    (folder / ".streamlit" / "config.toml").write_text('[server]\nbaseUrlPath = "planted"\n')
    (folder / "notes.md").write_text(
        "# Packages\n\nUse apt install NAME to install a package on Debian.\n", encoding="utf-8"
    )


def kb(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KB, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


@pytest.fixture
def planted(tmp_path: Path, kb_home: Path) -> tuple[Path, Path, dict[str, str]]:
    folder, markers = tmp_path / "work", tmp_path / "markers"
    folder.mkdir()
    markers.mkdir()
    plant(folder, markers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "PYTHON"))}
    env |= {
        "KB_HOME": str(kb_home),
        "KB_MAX_TOKENS": "16",
        "KB_CHAT_MODEL": "SmolLM2-135M-Instruct",
    }
    return folder, markers, env


def test_commands_run_from_a_folder_of_planted_modules_run_none_of_them(
    planted: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, markers, env = planted
    # The real embedder with an empty cache: the first use prepares it (converts e5).
    env |= {"KB_EMBEDDING_BACKEND": "onnx", "KB_MODEL_CACHE": str(tmp_path / "cache"),
            "KB_CHAT_BACKEND": "llama-cpp"}  # fmt: skip
    ingest = kb(folder, env, "ingest", ".")
    assert ingest.returncode == 0, ingest.stderr
    assert list((tmp_path / "cache").rglob("*.onnx")), "the model was prepared"
    search = kb(folder, env, "search", "install a package")
    assert search.returncode == 0 and "notes.md" in search.stdout, search.stderr
    ask = kb(folder, env, "ask", "How do I install a package?")
    assert ask.returncode == 0 and ask.stdout.strip(), ask.stderr
    assert sorted(p.name for p in markers.iterdir()) == []


def test_the_app_started_from_such_a_folder_runs_none_of_them(
    planted: tuple[Path, Path, dict[str, str]],
) -> None:
    folder, markers, env = planted
    port = free_port()
    process = subprocess.Popen(
        [KB, "app", "--port", str(port)], cwd=folder, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/_stcore/health", process)  # not under /planted: its config unread
        streamlit = next(
            p for p in psutil.Process(process.pid).children(recursive=True)
            if "streamlit" in " ".join(p.cmdline())
        )  # fmt: skip
        assert {"-E", "-P"} <= set(streamlit.cmdline()) and Path(streamlit.cwd()) == PACKAGE_DIR
        if browser_missing() is None:  # a session runs app.py and its pages
            with chromium() as browser:
                page = browser.new_page()
                page.goto(url)
                page.get_by_text("Documents in default").wait_for(timeout=60_000)
        else:
            print(f"app.py not rendered in a browser: {browser_missing()}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert sorted(p.name for p in markers.iterdir()) == []


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "kb app exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def test_installs_beside_a_distribution_with_top_level_models_and_eval(tmp_path: Path) -> None:
    """pip overwrites clashing files silently: kb-assistant must not have any."""
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    (other / "models" / "__init__.py").write_text("WHO = 'other-models'\n")
    (other / "eval.py").write_text("WHO = 'other-eval'\n")
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "other-models"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["models"]\npy-modules = ["eval"]\n'
    )
    target = tmp_path / "site"
    for project in (other, ROOT):  # no network: build with the setuptools already here
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--target", str(target), str(project)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert [n for n in installed if n not in {"bin", "__pycache__"}] == [
        "eval.py",
        "kb_assistant",
        "models",
    ]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import models, eval; "
        "import kb_assistant.models.factory, kb_assistant.eval.scoring, kb_assistant.cli; "
        "from kb_assistant.prompts import load_prompt; "
        "print(models.WHO, eval.WHO, kb_assistant.__file__.startswith(sys.argv[1]), "
        "bool(load_prompt('refusal', 'zh')))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(target)], capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout.split() == ["other-models", "other-eval", "True", "True"], done.stderr
    assert (target / "kb_assistant" / ".streamlit" / "config.toml").is_file()
    assert (target / "kb_assistant" / "eval" / "offtopic.zh.jsonl").is_file()
