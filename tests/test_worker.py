"""The chat model runs in a worker process: a native crash costs one question, never the app.

Real GGUF (SmolLM2-135M), real worker processes, real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.cli import main
from kb_assistant.errors import ModelCrashed, ModelError
from kb_assistant.models.cpu import (
    LLAMA_CPP_VERSION,
    build_features,
    cmake_args,
    missing_features,
    rebuild_command,
)
from kb_assistant.models.llm import LocalLLM, resolve_chat_model
from kb_assistant.models.protocol import Sampling
from kb_assistant.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def assistant(kb_home: Path, tmp_path: Path) -> Assistant:
    settings = load_settings(
        kb_home, chat_backend="llama-cpp", max_tokens=32, temperature=0.0,
        abstain_min_dense=0.0, abstain_min_coverage=0.0,
    )  # fmt: skip
    assistant = build_assistant(settings)
    doc = tmp_path / "apt.md"
    doc.write_text("# Installing\n\nUse apt install NAME to install a package.\n", "utf-8")
    assistant.ingest([doc])
    return assistant


def pid_of(assistant: Assistant) -> int:
    pid = assistant.chat_model.engine.worker_pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return pid


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGILL, signal.SIGSEGV])
def test_a_worker_killed_mid_answer_costs_one_question(
    assistant: Assistant, sig: signal.Signals
) -> None:
    first = assistant.ask("How do I install a package?")
    assert first.answer and not first.refused
    victim = pid_of(assistant)

    def kill_on_first_token(piece: str) -> None:
        if pid_of(assistant) == victim:
            os.kill(victim, sig)

    with pytest.raises(ModelCrashed) as crashed:
        assistant.ask("How do I install a package?", on_token=kill_on_first_token)
    message = str(crashed.value)
    assert f"{sig.name}:" in message and "model worker died while answering" in message
    if sig == signal.SIGILL:
        assert "instruction the CPU cannot run" in message and "--rebuild-llama" in message
    if sig == signal.SIGKILL:
        assert "memory" in message
    # Nothing else in the process is affected: the knowledge base answers searches, and the
    # next question starts a fresh worker.
    assert assistant.search("install a package")
    again = assistant.ask("How do I install a package?")
    assert again.answer and not again.refused
    assert pid_of(assistant) != victim
    assistant.close()


def test_kb_chat_goes_on_after_the_worker_dies_mid_answer(
    assistant: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb_assistant.cli import answers

    monkeypatch.setattr("kb_assistant.cli.base.Context.assistant", lambda self: assistant)
    echo = answers._echo_stream
    killed: list[int] = []

    def kill_then_echo(piece: str) -> None:
        if not killed:
            killed.append(pid_of(assistant))
            os.kill(killed[0], signal.SIGKILL)
        echo(piece)

    monkeypatch.setattr(answers, "_echo_stream", kill_then_echo)
    questions = "How do I install a package?\nHow do I install a package?\n/exit\n"
    result = CliRunner().invoke(main, ["chat"], input=questions)
    assert result.exit_code == 0, result.output
    assert "error: " in result.stderr and "SIGKILL" in result.stderr
    assert "Sources:" in result.stdout or "passages it was given" in result.stdout  # 2nd answered
    assert pid_of(assistant) != killed[0]
    assistant.close()


def test_a_worker_killed_between_questions_is_replaced(assistant: Assistant) -> None:
    assistant.ask("How do I install a package?")
    victim = pid_of(assistant)
    os.kill(victim, signal.SIGKILL)
    answer = assistant.ask("How do I install a package?")
    assert answer.answer and pid_of(assistant) != victim
    assistant.close()


def test_a_malformed_gguf_is_a_clear_error_not_a_dead_process(tmp_path: Path) -> None:
    real = resolve_chat_model("SmolLM2-135M-Instruct").read_bytes()
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(real[: len(real) // 3])
    engine = LocalLLM(broken, context_cap=256, threads=1)
    with pytest.raises(ModelError, match=r"truncated\.gguf: (llama\.cpp cannot load it|the model)"):
        list(engine.stream_chat([{"role": "user", "content": "hi"}], Sampling(max_tokens=2)))
    engine.close()


def test_an_abandoned_stream_is_cancelled_in_the_worker(tmp_path: Path) -> None:
    engine = LocalLLM(resolve_chat_model("SmolLM2-135M-Instruct"), context_cap=512, threads=2)
    messages = [{"role": "user", "content": "Count from one to one hundred in words."}]
    stream = engine.stream_chat(messages, Sampling(max_tokens=300, temperature=0.0))
    next(stream)
    stream.close()  # a closed tab: the worker stops generating and takes the next question
    pieces = list(engine.stream_chat(messages, Sampling(max_tokens=3, temperature=0.0)))
    assert 1 <= len(pieces) <= 3
    engine.close()


def test_the_app_process_never_loads_llama_cpp(kb_home: Path, tmp_path: Path) -> None:
    doc = tmp_path / "apt.md"
    doc.write_text("Use apt install NAME to install a package.\n", "utf-8")
    code = (
        "import sys; from kb_assistant.assistant import build_assistant;"
        "from kb_assistant.settings import load_settings;"
        f"a = build_assistant(load_settings({str(kb_home)!r}, chat_backend='llama-cpp', "
        "max_tokens=16, embedding_backend='fake'));"
        f"a.ingest([{str(doc)!r}]); r = a.ask('How do I install a package?');"
        "print(bool(r.answer), 'llama_cpp' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.stdout.split() == ["True", "False"], done.stderr


def test_doctor_runs_one_token_in_a_worker_and_shows_the_cpu(kb_home: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["generation_check"]["ok"] is True
    assert report["cpu"]["features"] and "AVX" in report["build"]
    assert report["build_features_missing_on_this_cpu"] == []
    human = CliRunner().invoke(main, ["doctor"])
    assert "generation check: ok, one token in" in human.stdout
    assert "cpu: " in human.stdout


def test_doctor_reports_a_model_the_worker_cannot_load(kb_home: Path, tmp_path: Path) -> None:
    real = resolve_chat_model("SmolLM2-135M-Instruct").read_bytes()
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(real[: len(real) // 3])
    result = CliRunner().invoke(main, ["doctor", "--model", str(broken)])
    assert result.exit_code == 1
    assert "generation check: FAILED: " in result.stdout and "truncated.gguf" in result.stdout


# --- the build against the CPU (no model needed) --------------------------------------------

AVX2_ONLY = {"pni", "ssse3", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
AMX_MACHINE = AVX2_ONLY | {
    "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
}  # fmt: skip
NATIVE_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)


def test_the_build_flags_follow_the_cpu_and_never_include_amx() -> None:
    amx = cmake_args(AMX_MACHINE, x86=True)
    assert "-DGGML_NATIVE=OFF" in amx and "-DGGML_AVX512=ON" in amx
    assert "-DGGML_AVX512_BF16=ON" in amx and "AMX" not in amx
    older = cmake_args(AVX2_ONLY, x86=True)
    assert "-DGGML_AVX2=ON" in older and "-DGGML_AVX512=OFF" in older
    assert "-DGGML_AVX_VNNI=OFF" in older
    assert cmake_args(AMX_MACHINE, x86=False) == "-DLLAVA_BUILD=OFF"  # Arm: llama.cpp's own


def test_a_wheel_built_on_another_cpu_is_recognised() -> None:
    assert "AMX_INT8" in build_features(NATIVE_BUILD)
    assert missing_features(NATIVE_BUILD, AMX_MACHINE, x86=True) == []
    missing = missing_features(NATIVE_BUILD, AVX2_ONLY, x86=True)
    assert missing == ["AMX_INT8", "AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI",
                       "AVX_VNNI"]  # fmt: skip


def test_the_fix_names_the_pinned_llama_cpp_version() -> None:
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={LLAMA_CPP_VERSION}"' in pyproject
    assert f"llama-cpp-python=={LLAMA_CPP_VERSION})" in rebuild_command()


def test_a_death_by_a_signal_without_a_name_still_reads_as_one() -> None:
    from kb_assistant.models.worker import _death

    assert _death(-35, "").startswith("signal 35: llama.cpp crashed")
    assert _death(-9, "Killed\n").startswith("SIGKILL: it was killed")
    assert _death(3, "boom").endswith("(last output: boom)")


def test_the_prompt_cache_keeps_no_logits_so_memory_stays_bounded() -> None:
    """llama-cpp-python saves up to n_batch x n_vocab float32 logits with each prompt state and
    does not count them against the cache's capacity: ~100 MB per long prompt for SmolLM2
    (49,152 tokens), 311 MB for Qwen2.5. Our worker's cache drops them. Measured with a 64 MB
    cache, six ~900-token prompts: the worker grows by ~70 MB with them dropped, by 165-210 MB
    without."""
    import psutil

    engine = LocalLLM(resolve_chat_model("SmolLM2-135M-Instruct"), context_cap=2048, threads=2,
                      prompt_cache_bytes=64 << 20)  # fmt: skip
    sampling = Sampling(temperature=0.0, max_tokens=4, seed=1)
    filler = " ".join(
        f"Line {n}: the apt tool installs, upgrades and removes packages." for n in range(60)
    )
    try:
        sizes = []
        for n in range(6):  # six different long prompts: six saved states
            messages = [{"role": "user", "content": f"Question {n}. {filler} Summarise."}]
            "".join(engine.stream_chat(messages, sampling))
            assert engine.worker_pid is not None
            sizes.append(psutil.Process(engine.worker_pid).memory_info().rss)
        # Three ~21 MB states fit the capacity; each would carry 100 MB of logits besides.
        assert sizes[-1] - sizes[0] < 120 << 20, [s >> 20 for s in sizes]
    finally:
        engine.close()
