"""Shared fixtures: every test gets its own data directory and, unless it asks for the real
model, the keyword-hash embedder (deterministic, instant)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings, load_settings


def is_local(address: object) -> bool:
    """Whether a socket address stays on this machine (loopback or a Unix socket path)."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX
    host = str(address[0]) if isinstance(address, tuple) and address else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def offline() -> Iterator[list[object]]:
    """The whole suite runs offline: a connection off this machine fails and is recorded (the
    product must never need one); loopback stays open for the app's own server."""
    attempts: list[object] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(original: Any) -> Any:
        def call(self: socket.socket, address: object, *args: object) -> Any:
            if not is_local(address):
                attempts.append(address)
                raise OSError(f"tests run offline: connection to {address!r} refused")
            return original(self, address, *args)

        return call

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", guarded(connect))
    patch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    yield attempts
    patch.undo()


@pytest.fixture(autouse=True)
def kb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated KB_HOME; KB_* variables of the developer's shell do not leak in."""
    for key in list(os.environ):
        if key.startswith("KB_"):
            monkeypatch.delenv(key)
    home = tmp_path / "kb-home"
    monkeypatch.setenv("KB_HOME", str(home))
    monkeypatch.setenv("KB_EMBEDDING_BACKEND", "fake")
    monkeypatch.setenv("KB_CHAT_BACKEND", "fake")
    # Tests that run a real chat model use the embedded 135M one, for speed; the default
    # (a 1.5B catalog model) has its own end-to-end test (test_default_model.py).
    monkeypatch.setenv("KB_CHAT_MODEL", "SmolLM2-135M-Instruct")
    return home


@pytest.fixture
def settings(kb_home: Path) -> Settings:
    """Settings for the isolated home with the fake embedder."""
    return load_settings(kb_home)


@pytest.fixture
def embedder() -> HashEmbedder:
    """The keyword-hash embedder; ``.calls`` records batch sizes."""
    return HashEmbedder()


@pytest.fixture
def assistant(settings: Settings, embedder: HashEmbedder) -> Iterator[Assistant]:
    """An Assistant over the isolated home with the fake embedder."""
    a = build_assistant(settings, embeddings=embedder)
    yield a
    a.close()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the real model for the whole session."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def real_assistant(kb_home: Path, model_cache: Path) -> Iterator[Assistant]:
    """An Assistant with the real embedded embedding model (ONNX int8)."""
    a = build_assistant(load_settings(kb_home, embedding_backend="onnx", model_cache=model_cache))
    yield a
    a.close()
