"""Time to first token and decode speed: ``kb ask`` vs llama-cpp-python with the same prompt.

For each question, the Assistant answers (its model runs in the worker process; the prompt it
sends is captured), then a ``Llama`` with the same settings in this process is called directly
with that identical prompt: the difference is what the worker costs. Both start cold (KV cache
reset) and the two are interleaved, so the machine's noise hits both alike. Then a
few follow-up questions in sessions (the prompt cache on, as users run it) measure the
prefix-cache effect: the time from asking to the first answer token, cold and as a follow-up.

Usage: python -m bench.answer_latency [--questions 8] [--model NAME] [--record]   (needs debian-faq)
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import record_entry
from kb_assistant.chains.rag import RagParams

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


FOLLOW_UPS = [
    ("What is a Debian control file?", "And what fields does it contain?"),
    ("How do I install a package with apt?", "And how do I remove it again?"),
    ("What is the difference between stable and testing?", "Which one should I run on a server?"),
]


FOLLOW_UP_SOURCES = RagParams().follow_up_passages


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


def capture_prompts(engine: Any) -> list[list[dict[str, str]]]:
    """Every message list the engine is sent from now on, in order."""
    sent: list[list[dict[str, str]]] = []
    original = engine.stream_chat

    def capture(messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        sent.append(messages)
        return original(messages, *args, **kwargs)

    engine.stream_chat = capture
    return sent


def follow_ups(home: Path, raw: Any, sampling: Any, record: bool, chat_model: str) -> None:
    """Follow-ups as users run them: the prompt cache on, questions not asked before."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    chatting = build_assistant(load_settings(home, seed=7, max_tokens=96, chat_model=chat_model))
    chat_sent = capture_prompts(chatting.chat_model.engine)  # type: ignore[attr-defined]
    pairs = []
    for first, second in FOLLOW_UPS:
        session = chatting.new_conversation("faq")
        cold = chatting.ask(first, conversation=session).trace
        follow = chatting.ask(second, conversation=session).trace
        # The same follow-up prompt without the cache: what the prefix reuse saved.
        follow["uncached_ttft_s"] = raw_call(raw, chat_sent[-1], sampling)[0]
        pairs.append((cold, follow))
    med = statistics.median
    rows: list[list[Any]] = [["question", "first token s", "answer TTFT s",
                              "same prompt uncached s", "prompt tokens",
                              "passages added"]]  # fmt: skip
    for cold, follow in pairs:
        for trace in (cold, follow):
            prompt = trace.get("prompt", {})
            added = prompt.get("appended_sources") if prompt.get("continues_previous") else "—"
            uncached = trace.get("uncached_ttft_s")
            rows.append([trace["question"], trace["first_token_after_s"],
                         trace["time_to_first_token_s"],
                         "—" if uncached is None else round(uncached, 3),
                         trace["prompt_tokens"], added])  # fmt: skip
    reuse = med(f["uncached_ttft_s"] for _, f in pairs) / med(
        f["time_to_first_token_s"] for _, f in pairs
    )
    end_to_end = med(c["first_token_after_s"] for c, _ in pairs) / med(
        f["first_token_after_s"] for _, f in pairs
    )
    model_only = med(c["time_to_first_token_s"] for c, _ in pairs) / med(
        f["time_to_first_token_s"] for _, f in pairs
    )
    condense = "on" if chatting.rag_chain("faq").params.condense else "off (model < 1 B)"
    record_entry(
        f"Follow-up questions: prefix-cache reuse ({chat_model})", "(same run)", rows,
        [f"First token = from asking to the first answer token (rewrite if any, retrieval, "
         f"prompt); answer TTFT = the answer call alone; same prompt uncached = the follow-up's "
         f"identical prompt evaluated from scratch by llama-cpp-python. Prefix-cache reuse, "
         f"median uncached / cached follow-up TTFT: **x{reuse:.2f}** (target >= 3). Against "
         f"the conversation's first question (median cold / median follow-up): first token "
         f"x{end_to_end:.2f}, answer TTFT x{model_only:.2f}. A follow-up continues the "
         f"previous prompt and adds the passages new to the conversation among its best "
         f"{FOLLOW_UP_SOURCES}; condensing: {condense}."],
        write=record,
    )  # fmt: skip


def main(n: int, record: bool, chat_model: str) -> None:
    """Run the comparison and print the table."""
    from llama_cpp import Llama

    from kb_assistant.assistant import build_assistant
    from kb_assistant.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="kb-latency-"))
    # The prompt cache off for the overhead comparison: both sides then evaluate every prompt.
    settings = load_settings(home, seed=7, max_tokens=96, prompt_cache_mb=0,
                             chat_model=chat_model)  # fmt: skip
    assistant = build_assistant(settings)
    assistant.ingest(sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html")), kb="faq")
    model = assistant.chat_model
    engine = model.engine  # type: ignore[attr-defined]
    sent = capture_prompts(engine)
    threads = engine.threads
    raw = Llama(
        model_path=str(engine.path), n_ctx=engine.n_ctx, n_batch=512, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )  # fmt: skip
    ours, direct = [], []
    for question in QUESTIONS[:n]:
        engine.reset()  # cold, like the direct call
        answer = assistant.ask(question, kb="faq")
        trace = answer.trace
        ours.append((trace["time_to_first_token_s"], trace["tokens_per_s"], trace["prompt_tokens"]))
        ttft, speed, _ = raw_call(raw, sent[-1], model.sampling)  # type: ignore[attr-defined]
        direct.append((ttft, speed))
    med = statistics.median
    ttfts = (med(o[0] for o in ours), med(d[0] for d in direct))
    speeds = (med(o[1] for o in ours), med(d[1] for d in direct))
    record_entry(
        f"Answer latency: kb ask vs llama-cpp-python ({chat_model})",
        f"python -m bench.answer_latency --questions {n} --model {chat_model}",
        [["path", "TTFT s (median)", "decode tok/s (median)"],
         ["kb ask", round(ttfts[0], 3), round(speeds[0], 1)],
         ["llama-cpp-python direct", round(ttfts[1], 3), round(speeds[1], 1)],
         ["ratio", f"x{ttfts[0] / ttfts[1]:.3f}", f"x{speeds[0] / speeds[1]:.3f}"]],
        [f"{n} FAQ questions, median prompt {med(o[2] for o in ours):.0f} tokens; {chat_model}, "
         "max_tokens 96, seed 7; both cold (KV cache reset, prompt cache off), "
         "interleaved. kb ask's model runs in its worker process, tokens streamed back over "
         "a pipe; the direct call runs in this process. Target: within 3%."],
        write=record,
    )  # fmt: skip
    follow_ups(home, raw, model.sampling, record, chat_model)  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="chat model name or path")
    arguments = parser.parse_args()
    main(arguments.questions, arguments.record, arguments.model)
