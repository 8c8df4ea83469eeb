"""A GGUF whose chat template carries a template-injection payload (hardening item 19): it is
refused by Jinja's sandbox, reported by ``kb doctor``, and never runs; the doctor also records
the model file's SHA-256."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.cli import main
from kb_assistant.errors import ModelError
from kb_assistant.models.gguf_info import read_gguf_metadata, template_problem
from kb_assistant.models.llm import LocalLLM, resolve_chat_model

pytestmark = pytest.mark.slow


def hostile_gguf(tmp_path: Path, marker: Path) -> Path:
    """A copy of the embedded GGUF whose template would create ``marker`` if it ran.

    The payload is padded to the original template's length, so the header keeps its size and
    the tensors their offsets: the file stays a valid model.
    """
    source = resolve_chat_model("SmolLM2-135M-Instruct")
    original = str(read_gguf_metadata(source)["tokenizer.chat_template"]).encode()
    payload = (
        "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
    ).encode()
    assert len(payload) + 5 <= len(original)
    payload += b"{#" + b" " * (len(original) - len(payload) - 4) + b"#}"
    data = source.read_bytes()
    assert data.count(original) == 1
    target = tmp_path / "hostile.gguf"
    target.write_bytes(data.replace(original, payload))
    return target


def test_the_payload_is_refused_by_the_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = hostile_gguf(tmp_path, marker)
    template = str(read_gguf_metadata(model)["tokenizer.chat_template"])
    assert "__globals__" in template
    problem = template_problem(template)
    assert problem is not None and "refused by the sandbox" in problem
    with pytest.raises(ModelError, match="refused: its chat template tried to reach Python"):
        LocalLLM(model, context_cap=512, threads=1)._load()
    assert not marker.exists()


def test_doctor_reports_the_template_and_the_sha256(tmp_path: Path, kb_home: Path) -> None:
    marker = tmp_path / "pwned"
    model = hostile_gguf(tmp_path, marker)
    result = CliRunner().invoke(main, ["doctor", "--json"], env={"KB_CHAT_MODEL": str(model)})
    report = json.loads(result.stdout)
    assert report["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "refused by the sandbox" in report["chat_template"]
    assert not marker.exists()
    result = CliRunner().invoke(main, ["doctor", "--json"])
    report = json.loads(result.stdout)
    assert report["chat_template"] == "ok (renders in the sandbox)"
    shutil.rmtree(tmp_path, ignore_errors=True)
