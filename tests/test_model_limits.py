"""The real model at its limits (hardening items 14 and 15): a small context, a huge question,
llama.cpp refusing a prompt, four threads on one model, and a caller that gives up."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.errors import ContextOverflow
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import load_settings

pytestmark = pytest.mark.slow
TOPICS = ["pumps", "valves", "filters", "seals", "motors"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    """The real GGUF with a 512-token context, over 20 long chunks."""
    home = tmp_path_factory.mktemp("small-ctx")
    settings = load_settings(
        home, chat_backend="llama-cpp", context_size=512, chunk_tokens=200, chunk_overlap=0,
        abstain_min_dense=0.0, abstain_min_coverage=0.0, max_tokens=24, temperature=0.0,
    )  # fmt: skip
    assistant = build_assistant(settings, embeddings=HashEmbedder())
    docs = home / "docs"
    docs.mkdir()
    for i in range(20):
        topic = TOPICS[i % 5]
        text = " ".join(
            f"Maintenance of {topic} number {i}, step {j}: check and clean." for j in range(25)
        )
        (docs / f"manual{i:02}.txt").write_text(text, encoding="utf-8")
    assistant.ingest([docs])
    return assistant


def engine_of(assistant: Assistant) -> Any:
    return assistant.chat_model.engine  # type: ignore[attr-defined]


def test_twenty_long_chunks_are_trimmed_to_a_512_token_context(small: Assistant) -> None:
    answer = small.ask("How are pumps maintained?")
    assert answer.answer and not answer.refused
    assert engine_of(small).n_ctx == 512
    assert 1 <= len(answer.trace["in_prompt"]) < 20


def test_a_ten_thousand_token_question_is_trimmed(small: Assistant) -> None:
    question = "How are pumps maintained? " + "Please explain in detail. " * 2500
    answer = small.ask(question)
    assert answer.answer
    trimmed = answer.trace["question_trimmed"]
    assert trimmed["tokens"] > 10_000 and trimmed["kept"] <= 256


def test_llama_refusing_the_prompt_is_retried_with_fewer_sources_then_explained(
    small: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = small.chat_model
    # Make the budget believe every text is one token: the prompt goes in overfull.
    monkeypatch.setattr(type(model), "get_num_tokens", lambda self, text: 1)
    monkeypatch.setattr(type(model), "get_num_tokens_from_messages", lambda self, m, **k: 10)
    with pytest.raises(ContextOverflow, match=r"do not fit the model's context window \(512"):
        small.ask("How are pumps maintained?")
    monkeypatch.undo()
    assert small.ask("How are valves maintained?").answer  # the model is not left locked


def test_four_threads_share_the_model_one_generation_at_a_time(small: Assistant) -> None:
    engine = engine_of(small)
    worker = engine._load()
    original = worker.stream
    flight = {"now": 0, "most": 0}
    guard = threading.Lock()

    def counted(request: dict[str, Any]) -> Any:
        with guard:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
        try:
            yield from original(request)
        finally:
            with guard:
                flight["now"] -= 1

    worker.stream = counted
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            answers[i] = small.ask(f"How are {TOPICS[i]} maintained?").answer
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        worker.stream = original
    assert not errors and sorted(answers) == [0, 1, 2, 3] and all(answers.values())
    assert flight["most"] == 1


def test_the_lock_is_released_after_an_error_and_an_abandoned_stream(small: Assistant) -> None:
    engine = engine_of(small)

    def boom(piece: str) -> None:
        raise RuntimeError("the page went away")

    with pytest.raises(RuntimeError, match="went away"):
        small.ask("How are seals maintained?", on_token=boom)
    from kb_assistant.models.protocol import Sampling

    messages = [{"role": "user", "content": "Say hello."}]
    stream = engine.stream_chat(messages, Sampling(max_tokens=16))
    next(stream)  # a caller that takes one piece and gives up (a timeout, a closed tab)
    stream.close()
    done = threading.Event()

    def ask() -> None:
        small.ask("How are motors maintained?")
        done.set()

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join(120)
    assert done.is_set(), "the model stayed locked"


def test_a_context_overflow_is_one_line_at_the_command_line(
    small: Assistant, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from kb_assistant.cli import main

    monkeypatch.setattr(type(small.chat_model), "get_num_tokens", lambda self, text: 1)
    monkeypatch.setattr(
        type(small.chat_model), "get_num_tokens_from_messages", lambda self, m, **k: 10
    )
    monkeypatch.setattr("kb_assistant.cli.base.Context.assistant", lambda self: small)
    result = CliRunner().invoke(main, ["ask", "How are pumps maintained?"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "do not fit the model's context window" in result.stderr
