"""Read a GGUF file's metadata (the key/value header) without loading the model.

Only scalar and string values are kept; arrays (the vocabulary, merges) are skipped. Reading
the 98 MB SmolLM2 file's header this way takes milliseconds; llama.cpp's vocab-only load or
the ``gguf`` package's reader take far longer and print to stderr.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

from kb_assistant.errors import ModelError

# GGUF value types -> struct formats (8 = string and 9 = array are read separately).
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
MetaValue = int | float | bool | str


def _read(fh: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated header")
    return struct.unpack(fmt, data)


def _string(fh: BinaryIO) -> str:
    (length,) = _read(fh, "<Q")
    return fh.read(int(length)).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int) -> MetaValue | None:
    if kind in _SCALARS:
        value: MetaValue = _read(fh, _SCALARS[kind])[0]
        return value
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item_kind, count = _read(fh, "<IQ")
        if item_kind in _SCALARS:
            fh.seek(struct.calcsize(_SCALARS[int(item_kind)]) * int(count), 1)
        else:
            for _ in range(int(count)):
                _value(fh, int(item_kind))
        return None
    raise ValueError(f"unknown value type {kind}")


def read_gguf_metadata(path: Path) -> dict[str, MetaValue]:
    """Scalar and string metadata of a GGUF file.

    Raises:
        ModelError: not a GGUF file, or a damaged header.
    """
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelError(f"{path} is not a GGUF model file")
            _version, _tensors, count = _read(fh, "<IQQ")
            meta: dict[str, MetaValue] = {}
            for _ in range(int(count)):
                key = _string(fh)
                (kind,) = _read(fh, "<I")
                value = _value(fh, int(kind))
                if value is not None:
                    meta[key] = value
            return meta
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path}: cannot read the GGUF header ({exc})") from exc


def parameter_count(path: Path) -> float | None:
    """The model's parameters: its size label ("135M", "1.5B") or, failing that, an estimate
    from its shape (12 d^2 per block plus the embeddings); None when neither is there."""
    meta = read_gguf_metadata(path)
    label = str(meta.get("general.size_label") or "")
    match = re.fullmatch(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])", label.strip(), re.IGNORECASE)
    if match:
        scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match.group(3).upper()]
        return float(match.group(1) or 1) * float(match.group(2)) * scale
    arch = meta.get("general.architecture", "llama")
    width, blocks = meta.get(f"{arch}.embedding_length"), meta.get(f"{arch}.block_count")
    if isinstance(width, int) and isinstance(blocks, int):
        return 12.0 * blocks * width**2
    return None


def template_problem(template: str) -> str | None:
    """Why a GGUF's chat template is refused (None when it renders cleanly).

    The template comes from the model file, i.e. from whoever made it. It is rendered, as
    llama-cpp-python renders it, in Jinja's immutable sandbox, once, on sample messages:
    reaching for Python internals (``__globals__``, ``__subclasses__``...) raises
    ``SecurityError`` there instead of running.
    """
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def refuse(message: str) -> None:
        raise TemplateError(message)

    environment.globals["raise_exception"] = refuse
    sample = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        environment.from_string(template).render(
            messages=sample, bos_token="", eos_token="", add_generation_prompt=True
        )
    except SecurityError as exc:
        return f"its chat template tried to reach Python internals ({exc}); refused by the sandbox"
    except TemplateError:
        return None  # a template that raises on our sample (e.g. demands alternation) is fine
    except Exception as exc:
        return f"its chat template does not render ({type(exc).__name__}: {exc})"
    return None


_DIGESTS: dict[tuple[str, int, float], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file (remembered per path, size and modification time)."""
    from kb_assistant.vectorstore.files import hash_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _DIGESTS:
        _DIGESTS[key] = hash_file(path)[1]
    return _DIGESTS[key]
