"""What every CLI command shares: consoles, --json output, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and messages go to stderr, results to stdout: `--json` output stays parseable.
# Piped output is not cut at 80 columns (rich's default without a terminal).
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Registered model name (training registers a dataset's under its name); "
        "default: DUALMEDIA_MODEL_NAME when set, else the only registered model.",
    ),
]
VersionOpt = Annotated[str | None, typer.Option(help="Model version (default: the champion).")]


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None]) -> None:
    """Print a command's result: one JSON object, or the human rendering."""
    if as_json:
        print(json.dumps(result, default=str, indent=2))
    else:
        human(result)


def working(description: str, as_json: bool = False) -> AbstractContextManager[Any]:
    """A spinner on stderr saying what a long step is doing; nothing with --json or when
    stderr is not a terminal (scripts and logs get the result, not the animation)."""
    if as_json or not console.is_terminal:
        return nullcontext()
    return console.status(f"[bold]{description}[/] ...")


def error_object(exc: BaseException, command: str, known: bool) -> dict[str, Any]:
    """A failed command's error as JSON: what, where, and a hint."""
    hint = (
        "fix what the message names and run the command again"
        if known
        else "an unexpected error: run again with --debug for the traceback"
    )
    return {"error": type(exc).__name__, "message": str(exc), "command": command, "hint": hint}


@contextmanager
def progress_bar(
    description: str, total: int | None, unit_bytes: bool = False
) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields a callback advancing it by n (default 1)."""
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if unit_bytes else [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
