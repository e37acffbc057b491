"""`dualmedia publish` and `dualmedia features`."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, ModelNameOpt, VersionOpt, emit, out, working
from dualmedia.settings import get_settings


def publish_command(
    model: ModelNameOpt = None,
    version: VersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed the version's snapshot, write the offline store, apply and materialise to
    the online store (Feast). Publishing a version again reuses what it wrote."""
    from feature_repo.publish import publish
    from training.registry import resolve_version

    settings = get_settings()
    name, version = resolve_version(model, version, settings)
    with contextlib.redirect_stdout(sys.stderr), working(f"publishing {name} v{version}", as_json):
        result = publish(name, version, settings)
    emit(result, as_json, _print_publish)


def _print_publish(r: dict[str, Any]) -> None:
    state = "already published" if r["reused"] else "published"
    out.print(f"{state}: model version {r['model_version']} -> {r['offline_uri']}")
    for view, rows in sorted(r["rows"].items()):
        out.print(f"  {view:<18} {rows} rows")
    out.print(f"online store ({r['online_store']}) materialised; repository {r['repo']}")


def features_command(
    item_ids: Annotated[list[str], typer.Argument(help="Item ids (the dataset's record ids).")],
    as_json: JsonOpt = False,
) -> None:
    """Read items' embeddings and predictions from the online feature store."""
    from feature_repo.publish import online_features

    with contextlib.redirect_stdout(sys.stderr):
        rows = online_features(get_settings(), item_ids)
    emit({"items": rows}, as_json, _print_features)


def _print_features(r: dict[str, Any]) -> None:
    for row in r["items"]:
        out.print(f"[bold]{row['item_id']}[/] (model version {row['model_version']})")
        for key, value in row.items():
            if key.endswith("_embedding"):
                shown = (
                    "missing"
                    if value is None
                    else f"{len(value)} dims [{', '.join(f'{v:.3f}' for v in value[:4])}, ...]"
                )
                out.print(f"  {key:<16} {shown}")
        for label, p in (row["predictions"] or {}).items():
            out.print(f"  {label:<16} {p['class']} ({max(p['probabilities'].values()):.2f})")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
    app.command("features")(features_command)
