"""`dualmedia monitor`: judge drift, keep the report, trigger retraining."""

from __future__ import annotations

import contextlib
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, ModelNameOpt, emit, out, working
from dualmedia.settings import get_settings


def monitor_command(
    model: ModelNameOpt = None,
    batch: Annotated[
        str | None,
        typer.Option(
            help="Judge this raw batch (scored by the champion) instead of served traffic."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset prefix holding --batch (default: the champion's dataset)."),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Served traffic since this UTC time (ISO 8601).")
    ] = None,
    trigger: Annotated[
        bool, typer.Option("--trigger/--no-trigger", help="Ask for retraining on drift.")
    ] = True,
    cooldown_minutes: Annotated[
        float, typer.Option(min=0, help="No new trigger within this long of the last one.")
    ] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Compare the current window with the champion's training data (Evidently): embedding
    drift per modality, prediction drift per label, raw fields and missing modalities.
    The report is kept in S3, attached to the model's MLflow run and listed on an index
    page; drift asks for retraining (a `dualmedia-retrain` asset event, with a cooldown)."""
    from monitoring.drift import DriftConfig
    from monitoring.monitor import run_monitor
    from training.registry import model_name

    settings = get_settings()
    config = DriftConfig(cooldown_minutes=cooldown_minutes)
    with contextlib.redirect_stdout(sys.stderr), working("judging drift", as_json):
        result = run_monitor(
            settings, model_name(model, settings), batch=batch, dataset_uri=dataset,
            since=since, config=config, trigger=trigger,
        )  # fmt: skip
    emit(result, as_json, _print_monitor)


def _print_monitor(r: dict[str, Any]) -> None:
    colour = "red" if r["verdict"] == "drift" else "green"
    out.print(
        f"[{colour}]{r['verdict']}[/] in {r['window']} ({r['n_current']} items) vs "
        f"model v{r['model_version']}'s held-out training data ({r['n_reference']} items)"
    )
    for reason in r["reasons"]:
        out.print(f"  - {reason}")
    if r.get("skipped"):
        out.print("not checked (too few items):")
        for check in r["skipped"]:
            out.print(f"  [yellow]- {check}[/]")
    out.print(f"report: {r['report_uri']}")
    out.print(f"index:  file://{r['index']['local']}")
    trigger = r["trigger"]
    if trigger.get("triggered"):
        out.print(
            f"retraining requested: {trigger['request_id']}, {trigger['via']} ({trigger['url']})"
        )
    else:
        out.print(f"no retraining: {trigger['why']}")


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor_command)
