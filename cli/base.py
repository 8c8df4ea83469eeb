"""What every ``kb`` command shares: the group, its context, options, output and errors."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from kb_assistant.assistant import Assistant

EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
kb_option = click.option(
    "--kb", "kb_name", metavar="NAME", help="Knowledge base (default: the 'kb' setting)."
)


class Context:
    """What every command gets: the options of ``kb`` itself and a lazily built Assistant."""

    def __init__(self, home: Path | None, verbose: int) -> None:
        self.home = home
        self.verbose = verbose
        self.overrides: dict[str, Any] = {}
        self._assistant: Assistant | None = None

    def settings(self) -> Any:
        from kb_assistant.settings import load_settings

        return load_settings(self.home, **self.overrides)

    def assistant(self) -> Assistant:
        if self._assistant is None:
            from kb_assistant.assistant import build_assistant

            settings = self.settings()
            level = "DEBUG" if self.verbose > 1 else "INFO" if self.verbose else settings.log_level
            logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
            self._assistant = build_assistant(settings)
        return self._assistant


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        human()


@contextmanager
def reported(as_json: bool) -> Iterator[None]:
    """Turn kb-assistant's errors into a message and exit code 1 (the one edge that prints)."""
    from kb_assistant.errors import KBError

    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            "interrupted: documents finished before the interruption are kept; "
            "run the same command again to continue",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except KBError as exc:
        if as_json:
            click.echo(
                json.dumps({"error": str(exc), "type": type(exc).__name__}, ensure_ascii=False)
            )
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)


_MODEL_OPTIONS = (
    click.option(
        "--model",
        "chat_model",
        metavar="GGUF",
        help="Chat model: a catalog name or a GGUF path (default: the chat_model setting).",
    ),
    click.option("--n-gpu-layers", type=int, help="Layers on the GPU: 0 CPU, -1 all."),
    click.option("--ctx", "context_size", type=int, help="Largest context window, in tokens."),
    click.option(
        "--lora", "lora_path", type=click.Path(dir_okay=False, path_type=Path), help="LoRA adapter."
    ),
    click.option("--temperature", type=float, help="Sampling temperature."),
    click.option("--top-k", type=int, help="Top-k sampling."),
    click.option("--top-p", type=float, help="Top-p (nucleus) sampling."),
    click.option("--repeat-penalty", type=float, help="Repetition penalty."),
    click.option("--max-tokens", type=int, help="Longest answer, in tokens."),
    click.option("--seed", type=int, help="Sampling seed."),
)  # fmt: skip


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model options; their values override settings for this command."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx: Context = click.get_current_context().obj
        for name in ("chat_model", "n_gpu_layers", "context_size", "lora_path", "temperature",
                     "top_k", "top_p", "repeat_penalty", "max_tokens", "seed"):  # fmt: skip
            value = kwargs.pop(name)
            if value is not None:
                ctx.overrides[name] = value
        return command(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KB_HOME",
    help="Data directory (default: $KB_HOME or the user data folder).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: int) -> None:
    """kb-assistant: a private knowledge base on your own machine."""
    ctx.obj = Context(home, verbose)


def progress_bar(*extra: str) -> Any:
    """A transient rich progress bar on stderr: description, bar, done/total, the ``extra``
    text columns (task fields), elapsed time and ETA. Imported only when one is shown."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *(TextColumn(e) for e in extra), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())  # fmt: skip
    return Progress(*columns, transient=True)
