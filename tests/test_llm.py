"""The real embedded GGUF (SmolLM2-135M, loads in well under a second) through llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import build_assistant
from kb_assistant.cli import main
from kb_assistant.models.gguf_info import parameter_count, read_gguf_metadata
from kb_assistant.models.hardware import doctor_report
from kb_assistant.models.llm import LocalLLM, resolve_chat_model
from kb_assistant.models.protocol import Sampling
from kb_assistant.settings import load_settings
from tests.files import CHINOOK

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return LocalLLM(resolve_chat_model("SmolLM2-135M-Instruct"), context_cap=2048, threads=2)


MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name one Debian package manager."},
]


def test_prompt_tokens_are_counted_exactly(llm: LocalLLM) -> None:
    # The reference: llama-cpp-python's own count, in a process of its own.
    code = (
        "import json, sys; from llama_cpp import Llama;"
        "m = Llama(model_path=sys.argv[1], n_ctx=512, verbose=False);"
        "r = m.create_chat_completion(messages=json.loads(sys.argv[2]), max_tokens=1, seed=1);"
        "print(r['usage']['prompt_tokens'])"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(llm.path), json.dumps(MESSAGES)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert llm.count_prompt(MESSAGES) == int(done.stdout)
    assert llm.n_ctx == 2048  # capped by the setting, below the 8192 it was trained with


def test_calls_are_serialised_and_the_second_caller_is_told(llm: LocalLLM) -> None:
    told: list[str] = []
    outputs: dict[str, str] = {}

    def ask(name: str) -> None:
        pieces = llm.stream_chat(
            MESSAGES, Sampling(max_tokens=24, seed=7), on_wait=lambda: told.append(name)
        )
        outputs[name] = "".join(pieces)

    with llm.exclusive():
        threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        threads[0].join(timeout=0.5)
        assert not outputs  # both wait while the model is held
    for t in threads:
        t.join(timeout=60)
    assert sorted(told) == ["a", "b"] and all(outputs.values())
    assert outputs["a"] == outputs["b"]  # same seed, same prompt: the calls did not interfere


def test_kb_ask_end_to_end_with_the_real_model(
    kb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_CHAT_BACKEND", "llama-cpp")
    (tmp_path / "apt.md").write_text(
        "# Installing\n\nUse apt install NAME to install a package.", "utf-8"
    )
    runner = CliRunner()
    runner.invoke(main, ["ingest", str(tmp_path)], catch_exceptions=False)
    result = runner.invoke(
        main,
        ["ask", "How do I install a package?", "--json", "--seed", "3", "--max-tokens", "48"],
        catch_exceptions=False,
    )
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and not data["refused"] and data["answer"]
    trace = data["trace"]
    assert trace["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and trace["prompt_tokens"] > 50
    assert trace["completion_tokens"] > 0 and trace["time_to_first_token_s"] is not None
    assert [s["source"].endswith("apt.md") for s in data["sources"]] == [True]


def test_doctor_reports_the_model_and_memory(kb_home: Path) -> None:
    report = doctor_report(load_settings(kb_home, context_size=4096))
    meta = read_gguf_metadata(Path(report["model"]))
    assert meta["general.architecture"] == "llama" and report["layers"] == 30
    assert report["context_size"] == 4096 and report["trained_context"] == 8192
    assert report["kv_cache_mib_per_1k_tokens"] == 22.5  # 2 x 30 layers x 3 kv heads x 64 x 2 B
    assert report["estimated_ram_mib"] > report["model_size_mib"]
    assert report["largest_context_that_fits"] == 8192


def test_a_missing_model_file_is_a_clear_error(kb_home: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--model", str(tmp_path / "nope.gguf")])
    assert result.exit_code == 1 and "not found" in result.stderr and ".gguf" in result.stderr
    (tmp_path / "fake.gguf").write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["doctor", "--model", str(tmp_path / "fake.gguf")])
    assert "is not a GGUF model file" in result.stderr


def test_the_embedded_model_fills_query_forms_through_the_grammar(kb_home: Path) -> None:
    """The real tiny model picks the open slots (here: which column 'USA' belongs to, and
    which aggregation of which measure) and its output always parses."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    assistant = build_assistant(load_settings(kb_home, chat_backend="llama-cpp"))
    assistant.connect_database(f"sqlite:///{CHINOOK}", name="chinook")
    usa = assistant.agent("How many invoices were billed to customers in the USA?")
    assert usa.rows == [[91]] and usa.answer == "The answer is 91."
    year = assistant.agent("In which year was the invoice revenue highest?")
    assert year.rows and year.rows[0][0] == 2009
    assistant.close()


def test_follow_ups_are_not_rewritten_by_a_model_too_small_for_it(kb_home: Path) -> None:
    path = resolve_chat_model("SmolLM2-135M-Instruct")
    assert parameter_count(path) == 135e6  # its size label
    auto = build_assistant(load_settings(kb_home, chat_backend="llama-cpp"))
    assert auto.rag_chain().params.condense is False  # 135 M < 1 B: answers instead
    forced = build_assistant(
        load_settings(kb_home, chat_backend="llama-cpp", condense_follow_ups="always")
    )
    assert forced.rag_chain().params.condense is True
