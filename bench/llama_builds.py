"""Which llama.cpp build to install: prompt and decode tokens/s of each option on this CPU.

Builds llama-cpp-python (the version pyproject.toml pins) three ways, each into its own folder
(a wheel per option, cached under ``--cache``; about 5 minutes each on 2 cores):

- ``native``: llama.cpp's default, ``GGML_NATIVE=ON`` (``-march=native``; AMX kernels on a CPU
  that advertises AMX);
- ``this-cpu``: what ``scripts/setup`` builds, ``GGML_NATIVE=OFF`` plus the instruction sets
  this CPU advertises, never AMX (``models/cpu.py``);
- ``portable``: ``GGML_NATIVE=OFF`` with llama.cpp's defaults (AVX2, FMA, F16C: any x86-64
  CPU since 2013).

Each runs, in a child process of its own, with llama.cpp's extra buffer types (weight
repacking; AMX tiles) on and off: a 1000-token prompt read from scratch, then 64 tokens
decoded greedily, repeated. A child that dies is recorded with its signal.

Usage: python -m bench.llama_builds [--model GGUF] [--rounds 2] [--cache DIR] [--record]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.measure import record_entry
from kb_assistant.models.cpu import cmake_args
from kb_assistant.models.llm import EMBEDDED_CHAT_MODEL, resolve_chat_model

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {
    "native": "-DLLAVA_BUILD=OFF",
    "this-cpu": cmake_args(),
    "portable": "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF",
}
# The measuring child: prompt tokens/s and decode tokens/s, as JSON.
_SPEED = """
import json, sys, time
import llama_cpp
from llama_cpp import Llama
model, extra, rounds = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3])
default = llama_cpp.llama_cpp.llama_model_default_params
def params():
    p = default(); p.use_extra_bufts = extra; return p
llama_cpp.llama_cpp.llama_model_default_params = params
llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=2, n_threads_batch=2,
            verbose=False)
text = " ".join(f"Paragraph {i} describes how a package manager installs, upgrades and removes "
                "software, and what it records about each package." for i in range(80))
tokens = llm.tokenize(text.encode())[:1000]
prompt, decode = [], []
for _ in range(rounds):
    llm.reset(); t = time.perf_counter(); llm.eval(tokens)
    prompt.append(len(tokens) / (time.perf_counter() - t))
    llm.reset(); llm.eval(tokens[:16]); t = time.perf_counter()
    for _ in range(64):
        llm.eval([llm.sample(temp=0)])
    decode.append(64 / (time.perf_counter() - t))
print(json.dumps({"prompt": prompt, "decode": decode,
                  "system": llama_cpp.llama_print_system_info().decode()}))
"""


def version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"llama-cpp-python==([\d.]+)"', text)
    assert found is not None, "pyproject.toml pins llama-cpp-python"
    return found.group(1)


def installed(option: str, cache: Path) -> Path:
    """A folder with llama-cpp-python built as ``option`` (built once, then reused)."""
    flags = OPTIONS[option]
    key = hashlib.sha256(f"{version()}|{flags}".encode()).hexdigest()[:12]
    target = cache / f"{option}-{key}"
    if (target / "llama_cpp").is_dir():
        return target
    wheels = cache / f"wheel-{option}-{key}"
    print(f"building {option}: {flags}", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
         "--no-binary", "llama-cpp-python", "-w", str(wheels), f"llama-cpp-python=={version()}"],
        env={**os.environ, "CMAKE_ARGS": flags}, check=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         *map(str, wheels.glob("*.whl"))],
        check=True,
    )  # fmt: skip
    return target


def speed(folder: Path, model: Path, extra: bool, rounds: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _SPEED, str(model), "on" if extra else "off", str(rounds)],
        env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode < 0:
        return {"died": signal.Signals(-done.returncode).name}
    if done.returncode != 0:
        return {"died": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}"}
    return dict(json.loads(done.stdout))


def main(model: Path, rounds: int, cache: Path, record: bool) -> None:
    folders = {option: installed(option, cache) for option in OPTIONS}
    runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for _ in range(rounds):  # interleaved, so the machine's noise hits every option alike
        for option, folder in folders.items():
            for extra in (True, False):
                runs.setdefault((option, extra), []).append(speed(folder, model, extra, 3))
    rows: list[list[Any]] = [["build", "extra buffer types", "prompt tok/s (median)",
                              "decode tok/s (median)", "AMX kernels"]]  # fmt: skip
    systems = {option: r["system"] for (option, _), rs in runs.items() for r in rs if "system" in r}
    for (option, extra), results in runs.items():
        died = next((r["died"] for r in results if "died" in r), None)
        amx = "AMX_INT8 = 1" in systems.get(option, "")  # read from a run that lived
        if died:
            rows.append([option, "on" if extra else "off", f"dies ({died})", "—",
                         "yes" if amx else "no"])  # fmt: skip
            continue
        prompt = statistics.median(v for r in results for v in r["prompt"])
        decode = statistics.median(v for r in results for v in r["decode"])
        rows.append([option, "on" if extra else "off", round(prompt, 1), round(decode, 1),
                     "yes" if amx else "no"])  # fmt: skip
    record_entry(
        f"llama.cpp builds on this CPU ({model.name})",
        f"python -m bench.llama_builds --model {model.name} --rounds {rounds}",
        rows,
        [
            f"llama-cpp-python {version()}, 2 threads, n_batch 512; a 1000-token prompt read "
            "from scratch, then 64 tokens decoded greedily; each child repeats 3 times, "
            f"{rounds} rounds interleaved. Flags: "
            + "; ".join(f"{k}: `{v}`" for k, v in OPTIONS.items())
        ],
        write=record,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/kb-bench-llama")
    parser.add_argument("--record", action="store_true")
    arguments = parser.parse_args()
    chosen = arguments.model or resolve_chat_model(EMBEDDED_CHAT_MODEL)
    main(chosen, arguments.rounds, arguments.cache, arguments.record)
