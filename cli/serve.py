"""``kb serve``: the HTTP API (OpenAI-compatible and native), and ``kb serve keys`` for its keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kb_assistant.cli.base import Context, emit, json_option, kb_option, main, reported

if TYPE_CHECKING:
    from kb_assistant.api.jobs import JobBoard
    from kb_assistant.api.keys import KeyStore

SHUTDOWN_WAIT_S = 60.0  # how long a stopping server lets ingest jobs finish


def _keys(ctx: Context) -> KeyStore:
    from kb_assistant.api.keys import KEYS_FILE, KeyStore

    return KeyStore(ctx.settings().home / KEYS_FILE)


@main.group("serve", invoke_without_command=True)
@click.option("--host", metavar="H", help="Address to listen on (default: the serve_host "
              "setting, 127.0.0.1). Any other than loopback needs an API key.")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), metavar="P",
              help="Port (default: the serve_port setting, 8765).")  # fmt: skip
@kb_option
@click.pass_context
def serve(
    click_ctx: click.Context, host: str | None, port: int | None, kb_name: str | None
) -> None:
    """Serve the knowledge bases over HTTP until Ctrl-C.

    OpenAI-compatible routes under /v1 (model "kb/<name>" answers from a knowledge base, with
    citations; "kb" is the --kb one) and the operations of this command (uploads, search, ask,
    agent); /docs describes them all. When API keys exist ('kb serve keys add NAME'), every
    request needs 'Authorization: Bearer <key>'.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    with reported(False):
        import uvicorn

        from kb_assistant.api.app import create_app
        from kb_assistant.api.keys import KEYS_FILE, KeyStore
        from kb_assistant.api.security import check_bind

        settings = ctx.settings()
        host = host or settings.serve_host
        port = port or settings.serve_port
        keys = KeyStore(settings.home / KEYS_FILE)
        check_bind(host, keys)
        assistant = ctx.assistant()
        if kb_name:
            assistant.library.open(kb_name).close()  # a wrong --kb fails now, not per request
        app = create_app(assistant, settings, keys=keys, default_kb=kb_name, host=host)
        access = "API keys required" if keys.any() else "no API key needed (loopback only)"
        click.echo(f"kb serve: http://{host}:{port}  (docs: /docs; {access})", err=True)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning" if not ctx.verbose
                        else "info", timeout_graceful_shutdown=5)  # fmt: skip
        finally:
            try:
                _finish_jobs(app.state.server.jobs)
            finally:  # a second Ctrl-C stops the wait, not the closing
                assistant.close()


def _finish_jobs(jobs: JobBoard, timeout: float = SHUTDOWN_WAIT_S) -> None:
    """Let running ingest jobs end before the knowledge bases close under them."""
    running = jobs.running()
    if not running:
        return
    click.echo(f"kb serve: waiting up to {timeout:.0f} s for {len(running)} ingest job(s) "
               "to finish (Ctrl-C again: stop now)...", err=True)  # fmt: skip
    if not jobs.wait(timeout):
        left = ", ".join(f"{j.job_id} ({j.kb})" for j in jobs.running())
        click.echo(f"kb serve: stopping with ingest job(s) unfinished: {left}; see what "
                   "they indexed with 'kb docs' and upload the rest again", err=True)  # fmt: skip


@serve.group("keys")
def keys_group() -> None:
    """API keys of 'kb serve' (stored as salted hashes in <home>/api_keys.json)."""


@keys_group.command("add")
@click.argument("name")
@json_option
@click.pass_obj
def keys_add(ctx: Context, name: str, as_json: bool) -> None:
    """Make a key NAME and print it (once: only its hash is kept)."""
    with reported(as_json):
        store = _keys(ctx)
        key = store.add(name)
    emit({"name": name, "key": key}, as_json, lambda: _print_new(name, key))


def _print_new(name: str, key: str) -> None:
    click.echo(key)
    click.echo(
        f"API key '{name}' made. It is shown this once: store it now (requests send it as "
        "'Authorization: Bearer <key>').", err=True,
    )  # fmt: skip


@keys_group.command("list")
@json_option
@click.pass_obj
def keys_list(ctx: Context, as_json: bool) -> None:
    """List keys: name, when made, and the end of each one's fingerprint."""
    with reported(as_json):
        store = _keys(ctx)
        infos = store.infos()
    rows = [i.to_json() for i in infos]

    def human() -> None:
        if not rows:
            click.echo("No API keys; 'kb serve keys add NAME' makes one.")
        for r in rows:
            click.echo(f"{r['name']}  made {r['created']}  fingerprint …{r['fingerprint']}")

    emit(rows, as_json, human)


@keys_group.command("revoke")
@click.argument("name")
@json_option
@click.pass_obj
def keys_revoke(ctx: Context, name: str, as_json: bool) -> None:
    """Delete the key NAME: requests with it fail from now on, on running servers too."""
    with reported(as_json):
        store = _keys(ctx)
        store.revoke(name)
    emit({"revoked": name}, as_json, lambda: click.echo(f"revoked API key '{name}'"))
    if not as_json and not store.any():
        click.echo("No keys remain: a 'kb serve' on loopback accepts requests without a key "
                   "again; one listening beyond loopback refuses every request until a key is "
                   "added ('kb serve keys add NAME').", err=True)  # fmt: skip
