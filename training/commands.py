"""CLI commands of the training stage: `dualmedia train` and `dualmedia evaluate`.

Registered through the `dualmedia.commands` entry point group (pyproject.toml):
    training = "training.commands:register"
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, ModelNameOpt, emit, out, working
from dualmedia.settings import get_settings

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "default.yaml"

SnapshotOpt = Annotated[
    str, typer.Option("--snapshot", help="Snapshot URI, e.g. s3://dualmedia-lake/snapshots/...")
]


def train_command(
    snapshot: SnapshotOpt,
    config: Annotated[
        Path | None, typer.Option("--config", help="Training config YAML (configs/train/).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")
    ] = False,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Epochs of both stages.")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="cpu, gpu or auto (default: the config's, auto).")
    ] = None,
    devices: Annotated[
        str | None, typer.Option(help="Devices per node: a number or 'auto'.")
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(min=1, help="Nodes of a cluster.")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Lightning strategy, e.g. ddp for several devices.")
    ] = None,
    register_model: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="Register the model as a new version (alias challenger) of the registered "
            "model named after the dataset.",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train the aligned encoders and the fusion model on a snapshot, tracked in MLflow.

    Checkpoints go to the lake bucket (checkpoints/<run-name>/); with --resume a killed
    run continues from its last checkpoint and the same MLflow runs, and a finished one
    prints its summary without training again. The model becomes a registered version
    with the alias `challenger`; `dualmedia promote` decides whether it becomes champion.
    """
    from dualmedia.snapshot import Snapshot
    from dualmedia.storage import ObjectStore
    from training.config import load_train_config
    from training.launch import run_training
    from training.registry import register as register_version

    train_config = load_train_config(config or DEFAULT_CONFIG)
    if epochs is not None:
        train_config = train_config.with_epochs(epochs)
    hardware = {
        "accelerator": accelerator,
        "devices": int(devices) if devices and devices.isdigit() else devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
    }
    hardware = {k: v for k, v in hardware.items() if v is not None}
    if hardware:
        updated = train_config.hardware.model_copy(update=hardware)
        train_config = train_config.model_copy(update={"hardware": updated})
    # Libraries print to stdout now and then; only the result may go there.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_training(snapshot, train_config, get_settings(), resume, progress=True)
    if not result:
        return  # a worker process of a distributed run: the first process reports
    if register_model:
        settings = get_settings()
        dataset = Snapshot(ObjectStore(settings), snapshot).spec.name
        result["registered"] = register_version(result, settings, name=dataset)
    emit(result, as_json, _print_train)


def _print_train(r: dict[str, Any]) -> None:
    verb = "reused finished run" if r.get("reused") else "trained"
    out.print(f"{verb} [bold]{r['run_name']}[/] in {r['seconds']}s; model {r['model_uri']}")
    out.print(f"MLflow parent run {r['parent_run_id']}, stages {r['child_run_ids']}")
    for name, value in sorted(r["metrics"].items()):
        if "/fusion/" in name or name.endswith("R_at_1"):
            out.print(f"  {name:<55} {value:.3f}")
    if r.get("registered"):
        reg = r["registered"]
        out.print(
            f"registered {reg['model_uri']} (alias {reg['alias']}); "
            "`dualmedia promote` compares it with the champion"
        )


def evaluate_command(
    model: Annotated[str, typer.Option("--model", help="MLflow model URI (models:/m-...).")],
    snapshot: SnapshotOpt,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a trained model on a snapshot's test split: retrieval, zero-shot, fusion."""
    from training.evaluate import evaluate_model

    with contextlib.redirect_stdout(sys.stderr), working(f"evaluating {model}", as_json):
        result = evaluate_model(model, snapshot, get_settings())
    emit(result, as_json, _print_evaluate)


def _print_evaluate(r: dict[str, Any]) -> None:
    out.print(f"{r['model_uri']} on {r['snapshot_uri']} ({r['split']} split)")
    for name, value in sorted(r["metrics"].items()):
        wanted = "/fusion/" in name or "/gain/" in name or name.endswith("R_at_1")
        if wanted and not name.endswith("/n"):
            out.print(f"  {name:<55} {value:.3f}")


def promote_command(
    model: ModelNameOpt = None,
    margin: Annotated[
        float, typer.Option(min=0, help="How much the mean fusion macro-F1 must improve.")
    ] = 0.0,
    max_label_drop: Annotated[
        float, typer.Option(min=0, help="The most any single label's macro-F1 may fall.")
    ] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Compare the challenger with the champion on the challenger's snapshot and promote
    it only if it is better; the decision and its reason are tagged on the version."""
    from training.registry import GateConfig, gate, model_name

    settings = get_settings()
    config = GateConfig(margin=margin, max_label_drop=max_label_drop)
    name = model_name(model, settings)
    with (
        contextlib.redirect_stdout(sys.stderr),
        working(f"{name}: challenger vs champion", as_json),
    ):
        decision = gate(name, settings, config)
    emit(decision, as_json, _print_gate)


def _print_gate(d: dict[str, Any]) -> None:
    if d["promoted"]:
        out.print(f"[green]promoted[/] v{d['challenger']} to champion: {d['reason']}")
    else:
        out.print(f"[yellow]not promoted[/] v{d.get('challenger')}: {d['reason']}")
    out.print(f"champion: v{d.get('champion')}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("promote")(promote_command)
