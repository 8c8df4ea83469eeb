"""``kb kbs``, ``kb``, ``config``, ``app``: knowledge bases, settings and the web app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kb_assistant.cli.base import (
    Context,
    emit,
    json_option,
    main,
    reported,
)
from kb_assistant.processes import PACKAGE_DIR, python_module


@main.command()
@json_option
@click.pass_obj
def kbs(ctx: Context, as_json: bool) -> None:
    """List knowledge bases."""
    with reported(as_json):
        summaries = ctx.assistant().list_kbs()
    rows: list[dict[str, Any]] = [
        {"name": s.name, "documents": s.documents, "chunks": s.chunks,
         "embedding_model": s.embedding_model, "created_at": s.created_at, "path": str(s.path)}
        for s in summaries
    ]  # fmt: skip

    def human() -> None:
        if not rows:
            click.echo("No knowledge bases yet; 'kb ingest PATH' creates 'default'.")
        for r in rows:
            click.echo(
                f"{r['name']}  {r['documents']} documents  {r['chunks']} chunks  "
                f"{r['embedding_model']}"
            )

    emit(rows, as_json, human)


@main.group("kb")
def kb_group() -> None:
    """Create or delete a knowledge base."""


@kb_group.command("create")
@click.argument("name")
@json_option
@click.pass_obj
def kb_create(ctx: Context, name: str, as_json: bool) -> None:
    """Create an empty knowledge base NAME."""
    with reported(as_json):
        kb = ctx.assistant().create_kb(name)
    data = {"name": kb.name, "path": str(kb.folder), "embedding_model": kb.manifest.embedding_model}
    emit(data, as_json, lambda: click.echo(f"created knowledge base '{kb.name}' in {kb.folder}"))


@kb_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def kb_delete(ctx: Context, name: str, yes: bool, as_json: bool) -> None:
    """Delete knowledge base NAME and everything in it."""
    if not yes and not as_json:
        click.confirm(f"Delete knowledge base '{name}' and all its documents?", abort=True)
    elif as_json and not yes:
        raise click.UsageError("--json needs --yes to delete without asking")
    with reported(as_json):
        left = ctx.assistant().delete_kb(name)
    if left is not None:  # deleted; only a Milvus server's collection stayed behind
        emit({"deleted": name, "warning": left}, as_json, lambda: click.echo(f"warning: {left}"))
        return
    emit({"deleted": name}, as_json, lambda: click.echo(f"deleted knowledge base '{name}'"))


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def config(click_ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings; 'kb config set/unset' change the config file."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    with reported(as_json):
        settings = ctx.settings()
    data = {k: _shown(v) for k, v in settings.model_dump().items()}
    data["config_file"] = str(settings.config_file)

    def human() -> None:
        for key, value in data.items():
            click.echo(f"{key} = {value!r}")
        click.echo("# change with 'kb config set NAME VALUE', KB_<NAME> environment variables, "
                   "or the config file above")  # fmt: skip

    emit(data, as_json, human)


def _shown(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "********"
    return str(value) if isinstance(value, Path) else value


@config.command("set")
@click.argument("name")
@click.argument("value")
@json_option
@click.pass_obj
def config_set(ctx: Context, name: str, value: str, as_json: bool) -> None:
    """Save one setting in the config file (validated first; the app uses it on its next run)."""
    from kb_assistant.settings import save_settings

    with reported(as_json):
        settings = save_settings(ctx.settings().home, {name: _parse_value(value)})
    shown = _shown(getattr(settings, name))
    emit({name: shown}, as_json, lambda: click.echo(f"{name} = {shown!r} (saved)"))


@config.command("unset")
@click.argument("name")
@json_option
@click.pass_obj
def config_unset(ctx: Context, name: str, as_json: bool) -> None:
    """Remove one setting from the config file (its default applies again)."""
    from kb_assistant.settings import save_settings

    with reported(as_json):
        settings = save_settings(ctx.settings().home, {}, remove=[name])
    shown = _shown(getattr(settings, name))
    emit({name: shown}, as_json, lambda: click.echo(f"{name} = {shown!r} (default)"))


def _parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, true/false), else the string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@main.command()
@click.option("--port", default=8501, show_default=True, help="Port to listen on.")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback publishes your documents to the network "
    "and needs the app_password setting.",
)
@click.pass_obj
def app(ctx: Context, port: int, address: str) -> None:
    """Start the Streamlit app in the browser (listens on 127.0.0.1 unless told otherwise)."""
    import os
    import subprocess

    with reported(False):
        settings = ctx.settings()
    if address not in _LOOPBACK and settings.app_password is None:
        raise click.UsageError(
            f"listening on {address} would let anyone on the network read your documents; "
            "set a password first ('kb config set app_password ...' or KB_APP_PASSWORD)"
        )
    env = dict(os.environ)
    if ctx.home is not None:
        env["KB_HOME"] = str(ctx.home)
    # Isolated (-I) and run from the package's folder: Streamlit reads .streamlit/config.toml
    # from its working folder, and the user's folder must not supply modules or settings.
    command = python_module(
        "streamlit", "run", str(PACKAGE_DIR / "app.py"), "--server.address", address,
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
    )  # fmt: skip
    sys.exit(subprocess.call(command, env=env, cwd=PACKAGE_DIR))
