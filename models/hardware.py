"""What ``kb doctor`` reports: llama.cpp build, GPU offload, and memory needed for a model.

Estimates: weights = the GGUF file's size (4-bit weights are used as stored); the KV cache holds
two f16 vectors (key, value) per layer, per KV head, per token:
``2 * layers * kv_heads * head_dim * 2 bytes * context``; plus a compute buffer of about
``n_batch * embedding * 4 bytes * 4`` and 64 MiB of runtime overhead. With GPU layers, the
offloaded share of weights and the KV cache move to VRAM.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from models.gguf_info import file_sha256, read_gguf_metadata, template_problem
from models.llm import resolve_chat_model

if TYPE_CHECKING:
    from settings import Settings

MIB = 2**20
OVERHEAD = 64 * MIB
N_BATCH = 512


def kv_bytes_per_token(meta: dict[str, Any]) -> int:
    """Bytes of f16 KV cache per token of context."""
    arch = meta.get("general.architecture", "llama")
    layers = int(meta.get(f"{arch}.block_count", 0))
    heads = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    embedding = int(meta.get(f"{arch}.embedding_length", 0))
    head_dim = int(meta.get(f"{arch}.attention.key_length", embedding // heads))
    return 2 * layers * kv_heads * head_dim * 2


def free_vram() -> int | None:
    """Free memory of the first NVIDIA GPU in bytes, if ``nvidia-smi`` can tell."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout  # fmt: skip
        return int(out.splitlines()[0].strip()) * MIB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def doctor_report(settings: Settings) -> dict[str, Any]:
    """Everything ``kb doctor`` prints, as a dict (stable keys, for ``--json``)."""
    import llama_cpp
    import psutil

    path = resolve_chat_model(settings.chat_model)
    meta = read_gguf_metadata(path)
    arch = str(meta.get("general.architecture", "llama"))
    layers = int(meta.get(f"{arch}.block_count", 0))
    trained = int(meta.get(f"{arch}.context_length", 0)) or None
    context = min(settings.context_size, trained) if trained else settings.context_size
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    wanted = layers + 1 if settings.n_gpu_layers < 0 else min(settings.n_gpu_layers, layers + 1)
    offloaded = wanted if gpu else 0
    weights = path.stat().st_size
    per_token = kv_bytes_per_token(meta)
    compute = N_BATCH * int(meta.get(f"{arch}.embedding_length", 0)) * 4 * 4
    share = offloaded / (layers + 1) if layers else 0.0
    kv = per_token * context
    ram = int(weights * (1 - share)) + (0 if offloaded else kv + compute) + OVERHEAD
    vram = int(weights * share) + (kv + compute if offloaded else 0)
    available = psutil.virtual_memory().available
    vram_free = free_vram()
    budget = (
        (vram_free - int(weights * share) - compute)
        if offloaded and vram_free
        else (available - int(weights * (1 - share)) - compute - OVERHEAD)
    )
    fits = max(0, budget // per_token) if per_token else None
    report: dict[str, Any] = {
        "llama_cpp_version": llama_cpp.__version__,
        "gpu_offload_supported": gpu,
        "build": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "model": str(path),
        "model_name": meta.get("general.name", path.stem),
        "model_size_mib": round(weights / MIB, 1),
        "model_sha256": file_sha256(path),
        "chat_template": template_problem(str(meta.get("tokenizer.chat_template") or ""))
        or "ok (renders in the sandbox)",
        "architecture": arch,
        "layers": layers,
        "trained_context": trained,
        "context_size": context,
        "gpu_layers_requested": settings.n_gpu_layers,
        "gpu_layers_offloaded": offloaded,
        "threads": settings.effective_threads,
        "kv_cache_mib_per_1k_tokens": round(per_token * 1024 / MIB, 2),
        "estimated_ram_mib": round(ram / MIB, 1),
        "estimated_vram_mib": round(vram / MIB, 1),
        "available_ram_mib": round(available / MIB, 1),
        "free_vram_mib": None if vram_free is None else round(vram_free / MIB, 1),
        "largest_context_that_fits": None if fits is None else min(fits, trained or fits),
    }
    if settings.n_gpu_layers and not gpu:
        report["warning"] = (
            "GPU layers were requested but this llama-cpp-python build has no GPU support; "
            'reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" (see README)'
        )
    return report
