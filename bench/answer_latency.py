"""Time to first token and decode speed: ``kb ask`` vs llama-cpp-python with the same prompt.

For each question, the Assistant answers (the prompt it sends is captured), then a separate
``Llama`` with the same settings is called directly with that identical prompt. Both start cold
(KV cache reset) and the two are interleaved, so the machine's noise hits both alike. Then a
follow-up question in a session measures the prefix-cache effect. Prints a Markdown table.

Usage: python bench/answer_latency.py [N_QUESTIONS]   (needs debian-faq; see eval/README)
"""

from __future__ import annotations

import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is a Debian package?",
    "How do I install a package with apt?",
    "What is the difference between stable and testing?",
    "How can I check which packages are installed?",
    "What is a virtual package?",
    "How do I upgrade my Debian release?",
    "What does dpkg do?",
    "Where can I get the Debian source code?",
]


def raw_call(llama: Any, messages: list[dict[str, str]], sampling: Any) -> tuple[float, float, int]:
    """TTFT, decode tokens/s and tokens of a direct streamed chat completion."""
    llama.reset()
    started = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llama.create_chat_completion(
        messages=messages, stream=True, temperature=sampling.temperature, top_k=sampling.top_k,
        top_p=sampling.top_p, repeat_penalty=sampling.repeat_penalty,
        max_tokens=sampling.max_tokens, seed=sampling.seed,
    ):  # fmt: skip
        if chunk["choices"][0]["delta"].get("content"):
            first = first if first is not None else time.perf_counter() - started
            tokens += 1
    total = time.perf_counter() - started
    assert first is not None
    return first, (tokens - 1) / (total - first), tokens


def main(n: int) -> None:
    """Run the comparison and print the table."""
    from llama_cpp import Llama

    from assistant import build_assistant
    from settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="kb-latency-"))
    # The prompt cache off for the overhead comparison: both sides then evaluate every prompt.
    settings = load_settings(home, seed=7, max_tokens=96, prompt_cache_mb=0)
    assistant = build_assistant(settings)
    assistant.ingest(sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html")), kb="faq")
    model = assistant.chat_model
    engine = model.engine  # type: ignore[attr-defined]
    sent: list[list[dict[str, str]]] = []
    original = engine.stream_chat

    def capture(messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        sent.append(messages)
        return original(messages, *args, **kwargs)

    engine.stream_chat = capture
    threads = engine.threads
    raw = Llama(
        model_path=str(engine.path), n_ctx=engine.n_ctx, n_batch=512, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )  # fmt: skip
    ours, direct = [], []
    for question in QUESTIONS[:n]:
        engine._load().reset()  # cold, like the direct call
        answer = assistant.ask(question, kb="faq")
        trace = answer.trace
        ours.append((trace["time_to_first_token_s"], trace["tokens_per_s"], trace["prompt_tokens"]))
        ttft, speed, _ = raw_call(raw, sent[-1], model.sampling)  # type: ignore[attr-defined]
        direct.append((ttft, speed))
    # Follow-ups as users run them: the prompt cache on, a question not asked before.
    chatting = build_assistant(load_settings(home, seed=7, max_tokens=96))
    session = chatting.new_session("faq")
    cold = chatting.ask("What is a Debian control file?", session=session).trace
    follow = chatting.ask("And what fields does it contain?", session=session).trace
    med = statistics.median
    rows = {
        "kb ask": (med(o[0] for o in ours), med(o[1] for o in ours)),
        "llama-cpp-python direct": (med(d[0] for d in direct), med(d[1] for d in direct)),
    }
    print(f"{n} questions, median prompt {med(o[2] for o in ours):.0f} tokens, max_tokens 96\n")
    print("| path | TTFT s (median) | decode tok/s (median) |")
    print("|---|---|---|")
    for name, (ttft, speed) in rows.items():
        print(f"| {name} | {ttft:.3f} | {speed:.1f} |")
    ratio_ttft = rows["kb ask"][0] / rows["llama-cpp-python direct"][0]
    ratio_speed = rows["kb ask"][1] / rows["llama-cpp-python direct"][1]
    print(f"\nkb/direct: TTFT x{ratio_ttft:.3f}, decode speed x{ratio_speed:.3f}")
    keys = ("first_token_after_s", "time_to_first_token_s", "prompt_tokens", "condense_s")
    print("\n| question | " + " | ".join(keys) + " |\n|---|---|---|---|---|")
    for name, trace in (("first (cold)", cold), ("follow-up", follow)):
        print(f"| {name} | " + " | ".join(str(trace.get(k)) for k in keys) + " |")
    print(f"\nfollow-up standalone query: {follow['standalone_query']!r}")
    speedup = cold["first_token_after_s"] / follow["first_token_after_s"]
    print(f"first token, cold / follow-up: x{speedup:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
