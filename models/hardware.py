"""What ``kb doctor`` reports: the CPU and the llama.cpp build, a one-token check of the model
in its worker process, GPU offload, and the memory a model needs.

Nothing here loads llama.cpp into this process: the build's features come from a child
(``models.llm.llama_build``) and the check runs in the model's own worker, so a build that
cannot run on this CPU is reported, with its fix, instead of ending the program.

Estimates: weights = the GGUF file's size (4-bit weights are used as stored); the KV cache holds
two f16 vectors (key, value) per layer, per KV head, per token:
``2 * layers * kv_heads * head_dim * 2 bytes * context``; plus a compute buffer of about
``n_batch * embedding * 4 bytes * 4`` and 64 MiB of runtime overhead. With GPU layers, the
offloaded share of weights and the KV cache move to VRAM.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb_assistant.errors import ModelError
from kb_assistant.models.cpu import X86_FEATURES, cpu_flags, rebuild_command
from kb_assistant.models.gguf_info import file_sha256, read_gguf_metadata, template_problem
from kb_assistant.models.llm import LocalLLM, is_remote_model, resolve_chat_model
from kb_assistant.models.protocol import Generation, Sampling
from kb_assistant.models.worker import llama_build

if TYPE_CHECKING:
    from kb_assistant.settings import Settings

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


def cpu_report() -> dict[str, Any]:
    """This CPU: its name and the instruction sets llama.cpp can use."""
    flags = cpu_flags()
    name = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    usable = [f for f, (needs, _) in X86_FEATURES.items() if set(needs) <= flags]
    return {"name": name or platform.processor() or platform.machine(), "features": usable}


def generation_check(settings: Settings) -> dict[str, Any]:
    """Load the model in a worker process and generate one token: ``{ok, seconds, ...}``, or
    ``{ok: False, error}`` naming what killed the worker and the fix."""
    engine = LocalLLM(
        resolve_chat_model(settings.chat_model, settings.model_cache_dir),
        context_cap=min(settings.context_size, 512),
        n_gpu_layers=settings.n_gpu_layers, threads=settings.effective_threads,
        lora_path=settings.lora_path,
    )  # fmt: skip
    started = time.perf_counter()
    stats = Generation()
    try:
        text = "".join(
            engine.stream_chat([{"role": "user", "content": "Hi"}], Sampling(max_tokens=1), stats)
        )
        info = engine.info
    except ModelError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        engine.close()
    return {
        "ok": True, "seconds": round(time.perf_counter() - started, 3), "token": text,
        "extra_buffer_types": info["extra_buffers"],
    }  # fmt: skip


def doctor_report(settings: Settings, *, check: bool = True) -> dict[str, Any]:
    """Everything ``kb doctor`` prints, as a dict (stable keys, for ``--json``); ``check``
    runs the one-token generation in a worker process (the settings page leaves it out)."""
    import psutil

    if is_remote_model(settings.chat_model):  # served elsewhere: no GGUF, no memory here
        from kb_assistant.models.factory import build_remote_chat_model
        from kb_assistant.models.remote import remote_report

        model = build_remote_chat_model(settings)
        try:
            return {"cpu": cpu_report(), **remote_report(settings, model, check=check)}
        finally:
            model.close()
    path = resolve_chat_model(settings.chat_model, settings.model_cache_dir)
    meta = read_gguf_metadata(path)
    arch = str(meta.get("general.architecture", "llama"))
    layers = int(meta.get(f"{arch}.block_count", 0))
    trained = int(meta.get(f"{arch}.context_length", 0)) or None
    context = min(settings.context_size, trained) if trained else settings.context_size
    try:
        build: dict[str, Any] = llama_build()
    except ModelError as exc:
        build = {"error": str(exc), "gpu_offload_supported": False}
    gpu = bool(build["gpu_offload_supported"])
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
        "cpu": cpu_report(),
        "llama_cpp_version": build.get("llama_cpp_version"),
        "gpu_offload_supported": gpu,
        "build": build.get("system_info") or build["error"],
        "build_features_missing_on_this_cpu": build.get("missing_features", []),
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
    if build.get("missing_features"):
        report["warning"] = (
            "this llama-cpp-python build uses instructions this CPU lacks "
            f"({', '.join(build['missing_features'])}); rebuild it: {rebuild_command()}"
        )
    elif any(f.startswith("AMX") for f in build.get("features", [])):
        report["note"] = (
            "this build has AMX kernels, which fault on machines that advertise AMX without "
            "granting it; the worker keeps them off (no extra buffer types). A build for this "
            f"CPU has none: {rebuild_command()}"
        )
    if check:
        report["generation_check"] = generation_check(settings)
    if settings.n_gpu_layers and not gpu:
        report["warning"] = (
            "GPU layers were requested but this llama-cpp-python build has no GPU support; "
            'reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" (see README)'
        )
    return report
