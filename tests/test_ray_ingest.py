"""Ingest on a real two-node Ray cluster (both nodes on this machine): the same catalog as the
local engine, incremental re-runs, a worker killed mid-run, and a clear error without Ray."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import Assistant
from kb_assistant.cli import main
from kb_assistant.ingest import IngestReport
from tests.files import make_pdf
from tests.ports import free_port

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

RAY = Path(sys.executable).parent / "ray"
# Offline and quiet: no usage statistics; no token (the cluster is this machine's alone).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
TASK_TITLE = "ray::read_on_worker"  # the process title of a worker running our task


@dataclass
class Cluster:
    address: str
    worker_node_port: int  # the second node's raylet: its workers are the ones killed


def _ray_start(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(RAY), "start", "--num-cpus", "1", "--object-store-memory", "100000000",
         "--disable-usage-stats", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _cluster_processes(temp: str, port: int) -> list[Any]:
    """Every process of our cluster: those naming its folder or its head, and their children."""
    mine = []
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        if any(temp in a or a.endswith(f":{port}") for a in args):
            mine.append(process)
    children = [c for p in mine for c in _children(p)]
    return list({p.pid: p for p in mine + children}.values())


def _children(process: Any) -> list[Any]:
    try:
        return list(process.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and a worker node, one CPU each; stopped (its processes killed by id)
    whatever happens."""
    temp = tempfile.mkdtemp(prefix="kbray", dir="/tmp")  # Ray's socket paths must stay short
    port, node_port = free_port(), free_port()
    env = {**os.environ, **RAY_ENV}
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # for the Ray client inside this process too
    try:
        _ray_start("--head", "--port", str(port), "--include-dashboard=false",
                   "--temp-dir", temp, env=env)  # fmt: skip
        _ray_start("--address", f"127.0.0.1:{port}", "--node-manager-port", str(node_port),
                   env=env)  # fmt: skip
        yield Cluster(f"127.0.0.1:{port}", node_port)
    finally:
        for process in _cluster_processes(temp, port):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(_cluster_processes(temp, port), timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_folder(folder: Path) -> Path:
    """Real files of several kinds, one of them broken and one of a type we do not read."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text(
        "\n\n".join(f"Line {i}: the apt tool installs package number {i}." for i in range(40))
    )
    (folder / "guide.md").write_text(
        "# Networking\n\n"
        + "\n\n".join(f"Step {i} sets interface eth{i} to a static address." for i in range(30))
        + "\n\n## Firewall\n\nThe firewall drops packets it does not expect.\n"
    )
    (folder / "page.html").write_text(
        "<html><head><title>Boot</title></head><body><h1>Boot loader</h1>"
        + "".join(f"<p>GRUB entry {i} starts kernel version {i}.</p>" for i in range(25))
        + "</body></html>"
    )
    make_pdf(folder / "manual.pdf", ["The first page talks about disks.", "Page two: backups."])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "empty.txt").write_text("")
    (folder / "picture.xyz").write_bytes(b"unknown")
    return folder


def catalog_rows(assistant: Assistant, kb: str) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """(documents, chunks with their vectors) of a knowledge base, by source and ordinal."""
    import numpy as np

    path = assistant.knowledge_base(kb).folder / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        docs = db.execute(
            "SELECT source, name, sha256, size, format, pages, chunks, status, notes "
            "FROM documents ORDER BY source"
        ).fetchall()
        chunks = [
            (*row[:-1], np.frombuffer(row[-1], dtype=np.float32))
            for row in db.execute(
                "SELECT d.source, c.ordinal, c.text, c.page, c.heading, c.tokens, c.text_hash, "
                "c.embedding FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "ORDER BY d.source, c.ordinal"
            )
        ]
    return docs, chunks


def ray_ingest(folder: Path, kb: str, address: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        main, ["ingest", str(folder), "--kb", kb, "--engine", "ray", "--ray-address", address,
               "--json"],
    )  # fmt: skip
    assert result.exit_code in (0, 3), result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_ray_gives_the_catalog_the_local_engine_gives_and_reruns_incrementally(
    cluster: Cluster, assistant: Assistant, tmp_path: Path
) -> None:
    import numpy as np

    folder = make_folder(tmp_path / "docs")
    local = assistant.ingest([folder], kb="local").to_json()
    on_ray = ray_ingest(folder, "onray", cluster.address)
    for key in ("added", "updated", "unchanged", "skipped", "chunks_added"):
        assert on_ray[key] == local[key], key
    # The local engine reads likely scans (a PDF without fonts) in a lane of their own, so its
    # failures may come in another order.
    failed = sorted(on_ray["failed"], key=lambda f: f["path"])
    assert failed == sorted(local["failed"], key=lambda f: f["path"])
    assert [Path(f["path"]).name for f in failed] == ["broken.pdf", "empty.txt"]
    assert "damaged or not a PDF" in failed[0]["error"] and failed[1]["error"] == "no text found"
    assert len(on_ray["added"]) == 4
    local_docs, local_chunks = catalog_rows(assistant, "local")
    ray_docs, ray_chunks = catalog_rows(assistant, "onray")
    assert ray_docs == local_docs
    assert len(ray_chunks) == len(local_chunks) == on_ray["chunks_added"]
    for mine, theirs in zip(ray_chunks, local_chunks, strict=True):
        assert mine[:-1] == theirs[:-1]
        assert np.allclose(mine[-1], theirs[-1], atol=1e-6)

    again = ray_ingest(folder, "onray", cluster.address)
    assert again["added"] == again["updated"] == [] and again["chunks_added"] == 0
    assert sorted(again["unchanged"]) == sorted(on_ray["added"])
    (folder / "notes.txt").write_text("Only one line now: the notes were rewritten.")
    changed = ray_ingest(folder, "onray", cluster.address)
    assert [Path(p).name for p in changed["updated"]] == ["notes.txt"]
    assert assistant.check_kb("onray").ok


def _running_task_on_worker_node(node_port: int) -> Any:
    """A worker process of the second node that is running our task, if any now."""
    for raylet in psutil.process_iter(["cmdline"]):
        args = raylet.info["cmdline"] or []
        if not any(a == f"--node_manager_port={node_port}" for a in args):
            continue
        for child in _children(raylet):
            try:
                if child.cmdline()[:1] == [TASK_TITLE]:
                    return child
            except psutil.NoSuchProcess:
                continue
    return None


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(
    cluster: Cluster, assistant: Assistant, tmp_path: Path
) -> None:
    import ray

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        (folder / f"file{i}.txt").write_text(f"Document {i} is about topic {i}.\n\nIt has text.")

    def slow_reads() -> None:
        """On every worker: reading a file takes a second, so there is time to kill one."""
        import time

        from kb_assistant import ingest_ray

        names = vars(ingest_ray)  # the task's body reads through this name
        read = names["read_document"]

        def slow(*args: Any, **kwargs: Any) -> None:
            time.sleep(1.0)
            read(*args, **kwargs)

        names["read_document"] = slow

    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False,
             runtime_env={"worker_process_setup_hook": slow_reads})  # fmt: skip
    reports: list[IngestReport] = []
    killed: list[int] = []
    try:
        ingesting = threading.Thread(
            target=lambda: reports.append(assistant.ingest([folder], kb="killed", engine="ray"))
        )
        ingesting.start()
        deadline = time.monotonic() + 60
        while not killed and ingesting.is_alive() and time.monotonic() < deadline:
            victim = _running_task_on_worker_node(cluster.worker_node_port)
            if victim is not None:
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)
            time.sleep(0.05)
        ingesting.join(120)
    finally:
        ray.shutdown()
    assert killed, "no task of the ingest ran on the second node"
    (report,) = reports
    assert report.failed == [] and len(report.added) == 8
    docs, chunks = catalog_rows(assistant, "killed")
    assert sorted(d[1] for d in docs) == [f"file{i}.txt" for i in range(8)]  # each once
    assert sum(d[6] for d in docs) == len(chunks) == report.chunks_added
    assert len({(c[0], c[1]) for c in chunks}) == len(chunks)
    check = CliRunner().invoke(main, ["check", "--kb", "killed"])
    assert check.exit_code == 0 and check.output.rstrip().endswith("ok"), check.output


def test_without_ray_the_ray_engine_says_what_to_install(
    tmp_path: Path, kb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    folder = make_folder(tmp_path / "docs")
    result = CliRunner().invoke(main, ["ingest", str(folder), "--engine", "ray"])
    assert result.exit_code != 0
    assert "pip install 'kb-assistant[ray]'" in result.output
    assert "Traceback" not in result.output
    assert not (kb_home / "kbs" / "default").exists()  # nothing was created before the error


def test_the_local_engine_never_imports_ray(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "docs")
    code = (
        "import sys\nfrom pathlib import Path\nfrom kb_assistant.assistant import build_assistant\n"
        "from kb_assistant.settings import load_settings\n"
        f"a = build_assistant(load_settings())\na.ingest([Path({str(folder)!r})])\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_ray_address_without_the_ray_engine_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", str(tmp_path), "--ray-address", "1.2.3.4:6379"])
    assert result.exit_code == 2 and "--ray-address is for --engine ray" in result.output


def test_an_unreachable_cluster_is_one_clear_line_at_once(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "docs")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = CliRunner().invoke(main, ["ingest", str(folder), "--engine", "ray",
                                       "--ray-address", address])  # fmt: skip
    assert time.monotonic() - started < 30  # Ray alone would retry for minutes
    assert result.exit_code == 1, result.output
    assert f"cannot connect to the Ray cluster at {address}" in result.output
    assert "Traceback" not in result.output


def test_no_secret_from_the_settings_is_sent_to_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb_assistant import ingest_ray

    sent: list[Any] = []

    def capture(job: Any, *, address: str | None = None) -> None:
        sent.append(job)  # and let the local engine do the reading (None)

    monkeypatch.setattr(ingest_ray, "ray_engine", capture)
    monkeypatch.setenv("KB_CHAT_API_KEY", "sk-server-key")
    monkeypatch.setenv("KB_MILVUS_TOKEN", "milvus-token")
    monkeypatch.setenv("KB_APP_PASSWORD", "app-password")
    folder = make_folder(tmp_path / "docs")
    result = CliRunner().invoke(main, ["ingest", str(folder), "--engine", "ray"])
    assert result.exit_code in (0, 3), result.output
    settings = sent[0].settings
    assert (settings.chat_api_key, settings.milvus_token, settings.app_password) == (None,) * 3
    assert settings.embedding_backend == "fake"  # what the workers need is all there
