"""This CPU's instruction sets, the llama.cpp build flags that match them, and the check of a
build against the CPU it runs on.

llama.cpp's default build (``GGML_NATIVE=ON``, ``-march=native``) compiles for the machine that
builds it, AMX tile kernels included where the CPU advertises AMX. Two things then go wrong:
on some machines (virtual ones among them) the first AMX instruction faults although
``/proc/cpuinfo`` lists ``amx_tile``; and pip caches the built wheel and installs it again on
another machine whose CPU lacks what it was compiled for. So ``scripts/setup`` compiles with
``GGML_NATIVE=OFF`` and the flags :func:`cmake_args` reads from this CPU (never AMX), and keys
its wheel cache by them; the model worker compares the build it loaded with this CPU
(:func:`missing_features`) before anything runs.

Standard library only: ``scripts/setup`` runs this file before the package is installed
(``python -I models/cpu.py cmake-args``).
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

# llama.cpp's name for a feature (as ``llama_print_system_info`` reports it) -> the flags
# /proc/cpuinfo must list for it, and the CMake option that compiles it.
X86_FEATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "SSE3": (("pni",), None),
    "SSSE3": (("ssse3",), None),
    "SSE42": (("sse4_2",), "GGML_SSE42"),
    "AVX": (("avx",), "GGML_AVX"),
    "AVX2": (("avx2",), "GGML_AVX2"),
    "F16C": (("f16c",), "GGML_F16C"),
    "FMA": (("fma",), "GGML_FMA"),
    "BMI2": (("bmi2",), "GGML_BMI2"),
    "AVX_VNNI": (("avx_vnni",), "GGML_AVX_VNNI"),
    # GGML_AVX512 compiles -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    "AVX512": (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), "GGML_AVX512"),
    "AVX512_VBMI": (("avx512vbmi",), "GGML_AVX512_VBMI"),
    "AVX512_VNNI": (("avx512_vnni",), "GGML_AVX512_VNNI"),
    "AVX512_BF16": (("avx512_bf16",), "GGML_AVX512_BF16"),
    # Never compiled by scripts/setup: see the module docstring.
    "AMX_INT8": (("amx_int8", "amx_tile"), None),
    "AMX_BF16": (("amx_bf16", "amx_tile"), None),
}
_SYSTEM_INFO = re.compile(r"([A-Z0-9_]+) = 1")
LLAMA_CPP_VERSION = "0.3.36"  # the version pyproject.toml pins (a test keeps them equal)


def cpu_flags() -> set[str]:
    """The instruction-set flags this CPU advertises (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def is_x86() -> bool:
    """Whether this is an x86-64 machine (the only one whose flags :func:`cmake_args` sets)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cmake_args(flags: set[str] | None = None, *, x86: bool | None = None) -> str:
    """The llama.cpp CMake flags for a CPU (this one unless ``flags``/``x86`` are given): every
    instruction set it has, none it lacks, no AMX, no ``-march=native``. Elsewhere than x86-64
    Linux, llama.cpp's defaults."""
    flags = cpu_flags() if flags is None else flags
    if not ((is_x86() if x86 is None else x86) and flags):
        return "-DLLAVA_BUILD=OFF"
    args = ["-DGGML_NATIVE=OFF"]
    for needs, option in X86_FEATURES.values():
        if option is not None:
            args.append(f"-D{option}={'ON' if set(needs) <= flags else 'OFF'}")
    return " ".join([*args, "-DLLAVA_BUILD=OFF"])


def build_features(system_info: str) -> set[str]:
    """The features a llama.cpp build was compiled with, from ``llama_print_system_info()``
    (``"CPU : SSE3 = 1 | AVX = 1 | …"``)."""
    return set(_SYSTEM_INFO.findall(system_info))


def missing_features(
    system_info: str, flags: set[str] | None = None, *, x86: bool | None = None
) -> list[str]:
    """Features the build uses that a CPU (this one unless ``flags``/``x86`` are given) does
    not advertise; empty when it cannot tell."""
    flags = cpu_flags() if flags is None else flags
    if not ((is_x86() if x86 is None else x86) and flags):
        return []
    return sorted(
        name
        for name in build_features(system_info)
        if name in X86_FEATURES and not set(X86_FEATURES[name][0]) <= flags
    )


def rebuild_command() -> str:
    """The command that rebuilds llama-cpp-python for this CPU."""
    return (
        'scripts/setup --rebuild-llama (or: CMAKE_ARGS="'
        f'{cmake_args()}" pip install --force-reinstall --no-deps --no-cache-dir '
        f"llama-cpp-python=={LLAMA_CPP_VERSION})"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["cmake-args"]:
        print(cmake_args())
    else:
        sys.exit("usage: python -I models/cpu.py cmake-args")
