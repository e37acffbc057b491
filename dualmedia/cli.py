"""`dualmedia`: the command line of the platform.

Every command is a thin layer over a plain function: it parses options, shows
progress, prints a human summary or (with --json) one JSON object, and turns errors into
a one-line message (with --json: a JSON error object on stdout) and exit code 1, never a
traceback unless --debug is given (anywhere on the command line).
"""

from __future__ import annotations

import json
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dualmedia.console import JsonOpt, console, emit, error_object, out, progress_bar
from dualmedia.contract import ContractError
from dualmedia.settings import get_settings
from dualmedia.stack import Stack, StackError
from dualmedia.storage import StorageError

app = typer.Typer(
    name="dualmedia",
    help=(
        "Multimodal (text, image, audio) ML platform: local stack, datasets, training, "
        "serving and monitoring. Settings come from DUALMEDIA_* variables or .env. "
        "--json: one JSON object (errors too); --debug: tracebacks of errors."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Errors a user can act on: shown as one line, not a traceback.
USER_ERRORS = (StackError, StorageError, ContractError, ValueError, RuntimeError, OSError)
# ---- the local stack -------------------------------------------------------------------
ServiceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--service", "-s", help="Only this service (repeatable): s3, mlflow, airflow, torchserve."
    ),
]


@app.command()
def up(service: ServiceOpt = None, as_json: JsonOpt = False) -> None:
    """Start the local stack (object storage, MLflow, Airflow, TorchServe) in the background.

    Waits for each health check. Idempotent: running services are left as they are.
    State, logs and pid files live under DUALMEDIA_HOME (default .dualmedia/).
    """
    settings = get_settings()
    stack = Stack(settings, only=service)

    def report(svc: Any, message: str) -> None:
        if not as_json:
            console.print(f"[bold]{svc.title:<20}[/] {svc.name:<11} {message}")

    stack.up(report)
    statuses = stack.status()
    hints = {s.name: s.login_hint() for s in stack.services if s.login_hint()}
    result = {"services": [s.to_dict() for s in statuses], "home": str(settings.home_dir)}
    emit(result, as_json, lambda r: _print_status(statuses, hints))


@app.command()
def down(service: ServiceOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the services `up` started (and only those). Data stays under DUALMEDIA_HOME."""
    stack = Stack(get_settings(), only=service)
    stopped: dict[str, str] = {}

    def report(svc: Any, message: str) -> None:
        stopped[svc.name] = message
        if not as_json:
            console.print(f"[bold]{svc.title:<20}[/] {svc.name:<11} {message}")

    stack.down(report)
    if as_json:
        emit({"services": stopped}, True, lambda r: None)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Show each service of the stack: its URL and state (running, stopped, ...)."""
    settings = get_settings()
    stack = Stack(settings)
    statuses = stack.status()
    emit(
        # Each service's "backend" and the feature store's say which profile runs.
        {
            "profile": settings.profile,
            "services": [s.to_dict() for s in statuses],
            "feature_store": stack.feature_store_backend(),
        },
        as_json,
        lambda r: _print_status(statuses, {}),
    )


def _print_status(statuses: list[Any], hints: dict[str, str]) -> None:
    table = Table(title="dualmedia local stack")
    for col in ("service", "what", "URL", "state", "log"):
        table.add_column(col, overflow="fold")
    colours = {"running": "green", "external-up": "green", "stopped": "dim"}
    for s in statuses:
        colour = colours.get(s.state, "red")
        table.add_row(s.name, s.title, s.url, f"[{colour}]{s.state}[/]", s.log or "")
    out.print(table)
    for name, hint in hints.items():
        out.print(f"{name}: {hint}")


# ---- datasets ---------------------------------------------------------------------------
@app.command()
def upload(
    folder: Annotated[
        Path, typer.Argument(help="Local dataset folder with dataset.yaml and batches.")
    ],
    uri: Annotated[str, typer.Argument(help="Target prefix, e.g. s3://dualmedia-raw/my-dataset.")],
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset folder in the contract's format (dataset.yaml + batch folders).

    Refuses a folder without a valid dataset.yaml. Files already there unchanged are
    skipped, so running it again uploads only what is new.
    """
    from dualmedia.datasets import check_dataset_folder, folder_size, upload_dataset
    from dualmedia.storage import ObjectStore

    check_dataset_folder(folder)
    store = ObjectStore(get_settings())
    with progress_bar("uploading", folder_size(folder), unit_bytes=True) as advance:
        result = upload_dataset(folder, uri, store, progress=advance)
    emit(result, as_json, _print_upload)


def _print_upload(r: dict[str, Any]) -> None:
    out.print(
        f"uploaded dataset [bold]{r['dataset']}[/] to {r['uri']}: batches {', '.join(r['batches'])}"
        f" ({r['files_uploaded']} files uploaded, {r['files_unchanged']} unchanged)"
    )


def register_stage_commands() -> None:
    """Stage packages add their commands through the `dualmedia.commands` entry point
    group (see pyproject.toml), so the core never imports a stage package."""
    for entry in sorted(entry_points(group="dualmedia.commands"), key=lambda e: e.name):
        entry.load()(app)


def main() -> None:
    register_stage_commands()
    debug = "--debug" in sys.argv[1:]
    if debug:  # a global flag, accepted anywhere: no command declares it
        sys.argv = [a for a in sys.argv if a != "--debug"]
    as_json = "--json" in sys.argv[1:]
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        known = isinstance(exc, USER_ERRORS)
        if debug:
            traceback.print_exc()
        if as_json:
            print(json.dumps(error_object(exc, command, known), default=str, indent=2))
        elif known:
            console.print(f"[red]error:[/] {exc}")
        else:
            console.print(f"[red]error ({type(exc).__name__}):[/] {exc} (--debug: the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
