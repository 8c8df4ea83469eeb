"""LoRA adapters (``--lora`` / ``lora_path``) on the real embedded GGUF (SmolLM2-135M).

No adapter ships, so each test writes a tiny one with the ``gguf`` package, shaped the way
llama.cpp's ``llama-adapter.cpp`` checks it (and ``convert_lora_to_gguf.py`` writes it):
``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, the base model's
``general.architecture``, and per adapted weight ``W`` (ggml shape ``[n_in, n_out]``) a pair
``W.lora_a`` of shape ``[n_in, rank]`` and ``W.lora_b`` of shape ``[rank, n_out]``.

What it proves:

- an adapter reaches llama.cpp through ``LocalLLM(..., lora_path=...)`` and the worker: with
  greedy sampling an adapter whose ``lora_b`` is zero leaves the reply unchanged, and one with
  random low-rank weights changes it;
- a bad adapter (random bytes, a truncated file, one made for another shape or architecture)
  fails as a ``ModelError`` of the engine, never the test process, and the base model still
  answers afterwards;
- that error says what is wrong with the adapter, in llama.cpp's words. (llama-cpp-python
  0.3.36 misses llama.cpp's refusal: a NULL adapter pointer passes its ``is None`` check, and
  the worker died of SIGSEGV at the first token; ``models.llama_worker.load`` checks it.)
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import pytest

from kb_assistant.errors import ModelError
from kb_assistant.models.gguf_info import read_gguf_metadata
from kb_assistant.models.llm import LocalLLM, resolve_chat_model
from kb_assistant.models.protocol import Sampling

pytestmark = pytest.mark.slow

BASE = resolve_chat_model("SmolLM2-135M-Instruct")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = Sampling(temperature=0.0, max_tokens=12, seed=1)
# One thread: ggml's threads spin-wait for each other, and on a busy two-core machine two of
# them made a 12-token reply take 5-30 s instead of 0.5 s.
THREADS = 1
TARGETS = ("attn_output", "ffn_down")  # square and rectangular weights


@cache
def base_shapes() -> dict[str, tuple[int, ...]]:
    """The base model's tensors and their ggml shapes (``ne``: inputs first)."""
    return {t.name: tuple(int(n) for n in t.shape) for t in gguf.GGUFReader(BASE).tensors}


def write_adapter(
    path: Path,
    *,
    architecture: str | None = None,
    rank: int = 8,
    layers: Iterable[int] = range(4),
    targets: Iterable[str] = TARGETS,
    std: float = 0.1,
    zero_b: bool = False,
    n_out: int | None = None,
) -> Path:
    """A LoRA adapter GGUF for the base model: random ``lora_a``, and ``lora_b`` random or
    zero; ``architecture`` and ``n_out`` (every output size) default to the base model's."""
    arch = architecture or str(read_gguf_metadata(BASE)["general.architecture"])
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))  # scale alpha/rank = 1
    rng = np.random.default_rng(0)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            inputs, outputs = base_shapes()[name]
            outputs = n_out or outputs
            # numpy shapes are ggml's reversed: lora_a [n_in, rank], lora_b [rank, n_out].
            a = rng.standard_normal((rank, inputs)) * std
            b = np.zeros((outputs, rank)) if zero_b else rng.standard_normal((outputs, rank)) * std
            writer.add_tensor(f"{name}.lora_a", a.astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def reply(lora_path: Path | None) -> str:
    """The greedy reply to ``MESSAGES`` from a fresh engine (closed after)."""
    engine = LocalLLM(BASE, context_cap=512, threads=THREADS, lora_path=lora_path)
    try:
        return "".join(engine.stream_chat(MESSAGES, GREEDY))
    finally:
        engine.close()


def test_the_adapter_is_built_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    adapter = gguf.GGUFReader(write_adapter(tmp_path / "adapter.gguf", rank=4, layers=[0]))
    fields = {key: adapter.fields[key].contents() for key in adapter.fields}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 4.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in adapter.tensors}
    assert shapes == {
        "blk.0.attn_output.weight.lora_a": (576, 4),
        "blk.0.attn_output.weight.lora_b": (4, 576),
        "blk.0.ffn_down.weight.lora_a": (1536, 4),  # ffn_down: 1536 in, 576 out
        "blk.0.ffn_down.weight.lora_b": (4, 576),
    }
    assert base_shapes()["blk.0.ffn_down.weight"] == (1536, 576)


def test_an_adapter_changes_the_greedy_reply(tmp_path: Path) -> None:
    base = reply(None)
    # Same path through llama.cpp (adapter loaded, no mmap), but B = 0 adds nothing: the reply
    # is the base model's, so any difference below comes from the adapter's weights.
    assert reply(write_adapter(tmp_path / "identity.gguf", zero_b=True)) == base
    adapted = reply(write_adapter(tmp_path / "adapter.gguf"))
    assert base and adapted and adapted != base


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def truncated(path: Path) -> Path:
    whole = write_adapter(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def other_shape(path: Path) -> Path:
    return write_adapter(path, targets=["attn_v"], n_out=576)  # attn_v has 192 outputs here


def other_architecture(path: Path) -> Path:
    return write_adapter(path, architecture="qwen2")


# (make the adapter, what the error must say is wrong: llama.cpp's words or a check's own)
MALFORMED = {
    "random-bytes": (random_bytes, r"not a GGUF|invalid magic|failed to load lora adapter"),
    "truncated": (truncated, r"corrupted or incomplete|truncated"),
}
MISMATCHED = {
    "other-shape": (other_shape, r"incorrect shape|wrong base model"),
    "other-architecture": (other_architecture, r"arch\w* mismatch|qwen2"),
}


def test_a_bad_adapter_fails_the_engine_not_the_app(tmp_path: Path) -> None:
    adapter = other_shape(tmp_path / "for-another-model.gguf")
    engine = LocalLLM(BASE, context_cap=512, threads=THREADS, lora_path=adapter)
    try:
        with pytest.raises(ModelError):
            list(engine.stream_chat(MESSAGES, GREEDY))
    finally:
        engine.close()
    assert reply(None)  # the base model still answers


def assert_names_the_problem(adapter: Path, reason: str) -> None:
    engine = LocalLLM(BASE, context_cap=512, threads=THREADS, lora_path=adapter)
    try:
        with pytest.raises(ModelError) as failed:
            list(engine.stream_chat(MESSAGES, GREEDY))
    finally:
        engine.close()
    message = str(failed.value)
    assert adapter.name in message and "lora" in message.lower(), message
    assert "SIGSEGV" not in message and "rebuild" not in message, message
    assert failed.match(f"(?i){reason}")


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_adapter_is_a_clear_error(tmp_path: Path, case: str) -> None:
    make, reason = MALFORMED[case]
    assert_names_the_problem(make(tmp_path / f"{case}.gguf"), reason)


@pytest.mark.parametrize("case", MISMATCHED)
def test_an_adapter_for_another_model_is_a_clear_error(tmp_path: Path, case: str) -> None:
    make, reason = MISMATCHED[case]
    assert_names_the_problem(make(tmp_path / f"{case}.gguf"), reason)
