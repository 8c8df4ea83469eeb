"""``kb models``: a catalog model is joined from its part wheels (fetched by real pip, here from
a local folder), verified against its pinned size and SHA-256, used, and removed; a damaged or
missing download installs nothing."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_assistant.cli import main
from kb_assistant.errors import ModelError
from kb_assistant.models import chat_models
from kb_assistant.models.chat_models import ChatModelEntry, install, installed_path
from kb_assistant.models.llm import resolve_chat_model

NAME = "tiny-test-model"


def make_wheels(source: Path, folder: Path, parts: int) -> list[tuple[str, str]]:
    """Split ``source`` into ``parts`` slices, each the data file of a wheel, as the model
    packages on PyPI are built."""
    data = source.read_bytes()
    step = -(-len(data) // parts)
    folder.mkdir(parents=True, exist_ok=True)
    pinned = []
    for n in range(1, parts + 1):
        project, module = f"kb-test-part{n}", f"kb_test_part{n}"
        member = f"{module}/data/part{n:02d}.bin"
        info = f"{module}-0.1.0.dist-info"
        with zipfile.ZipFile(folder / f"{module}-0.1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{module}/__init__.py", "")
            wheel.writestr(member, data[(n - 1) * step : n * step])
            wheel.writestr(f"{info}/METADATA",
                           f"Metadata-Version: 2.1\nName: {project}\nVersion: 0.1.0\n")  # fmt: skip
            wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n")  # fmt: skip
            wheel.writestr(f"{info}/RECORD", "")
        pinned.append((f"{project}==0.1.0", member))
    return pinned


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ChatModelEntry, Path]:
    """A catalog entry for the embedded SmolLM2 GGUF, split into three part wheels."""
    source = resolve_chat_model("SmolLM2-135M-Instruct")
    wheels = tmp_path / "wheels"
    parts = make_wheels(source, wheels, 3)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    model = ChatModelEntry(
        name=NAME, title="test", file_name="tiny.gguf", parts=tuple(parts),
        size=source.stat().st_size, sha256=digest, architecture="llama", parameters="135M",
        languages="English", licence="Apache-2.0", context=2048, quality="-", speed="-",
    )  # fmt: skip
    monkeypatch.setitem(chat_models.CHAT_MODELS, NAME, model)
    return model, wheels


def kb(*args: str) -> tuple[int, dict[str, object] | list[dict[str, object]]]:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def test_install_use_and_remove(
    catalog: tuple[ChatModelEntry, Path], tmp_path: Path, kb_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model, wheels = catalog
    models = tmp_path / "models"
    monkeypatch.setenv("KB_MODEL_CACHE", str(models))
    monkeypatch.delenv("KB_CHAT_MODEL")  # the config file decides, as for a user
    code, listed = kb("models", "list")
    assert code == 0 and isinstance(listed, list)
    row = next(r for r in listed if r["name"] == NAME)
    assert (row["installed"], row["in_use"]) == (False, False)
    code, out = kb("models", "use", NAME)
    assert code == 1 and "is not installed" in str(out) and f"kb models install {NAME}" in str(out)

    code, out = kb("models", "install", NAME, "--wheels", str(wheels), "--use")
    assert code == 0, out
    path = models / "tiny.gguf"
    assert path.read_bytes() == resolve_chat_model("SmolLM2-135M-Instruct").read_bytes()
    assert installed_path(NAME, models) == path == resolve_chat_model(NAME, models)
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == model.sha256
    assert not list(models.glob(".install-*")) and not list(models.glob("*.partial"))
    assert f'chat_model = "{NAME}"' in (kb_home / "config.toml").read_text()

    code, out = kb("models", "remove", NAME)
    assert code == 1 and "is the chat model in use" in str(out)
    assert kb("models", "use", "SmolLM2-135M-Instruct")[0] == 0
    assert kb("models", "remove", NAME) == (0, {"name": NAME, "removed": True})
    assert not path.exists() and installed_path(NAME, models) is None


def test_a_file_that_is_not_the_pinned_one_installs_nothing(
    catalog: tuple[ChatModelEntry, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, wheels = catalog
    wrong = ChatModelEntry(**{**model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(chat_models.CHAT_MODELS, NAME, wrong)
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"SHA-256 .* are pinned; the packages were changed or "
                                         r"damaged\. Nothing was installed\."):  # fmt: skip
        install(NAME, models, wheels=wheels)
    assert sorted(p.name for p in models.iterdir()) == []


def test_a_missing_part_fails_the_download_with_pips_reason(
    catalog: tuple[ChatModelEntry, Path], tmp_path: Path
) -> None:
    _, wheels = catalog
    (wheels / "kb_test_part2-0.1.0-py3-none-any.whl").unlink()
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"downloading tiny-test-model failed: .*kb-test-part2"):
        install(NAME, models, wheels=wheels)
    assert sorted(p.name for p in models.iterdir()) == []


def test_a_file_of_another_architecture_is_refused(
    catalog: tuple[ChatModelEntry, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, wheels = catalog
    monkeypatch.setitem(chat_models.CHAT_MODELS, NAME,
                        ChatModelEntry(**{**model.__dict__, "architecture": "qwen2"}))  # fmt: skip
    with pytest.raises(ModelError, match="the file is a 'llama' model, not 'qwen2'"):
        install(NAME, tmp_path / "models", wheels=wheels)
    assert not (tmp_path / "models" / "tiny.gguf").exists()


def test_a_small_machine_is_recommended_a_smaller_model() -> None:
    from kb_assistant.models.chat_models import RECOMMENDED, recommended_for

    gib = 2**30
    assert recommended_for(16 * gib, 4) == RECOMMENDED == "qwen2.5-coder-1.5b"
    assert recommended_for(2 * gib, 4) == "qwen2.5-coder-0.5b"
    assert recommended_for(16 * gib, 1) == "qwen2.5-coder-0.5b"
    assert recommended_for(gib, 2) == "SmolLM2-135M-Instruct"
