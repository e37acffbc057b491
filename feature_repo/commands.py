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
    batch: Annotated[
        str | None,
        typer.Option(
            help="Publish only this new raw batch of the dataset, scored by the version: its "
            "items go online and into the version's search catalogue, which serving workers "
            "pick up without a redeploy."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset prefix holding --batch (default: the version's dataset)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed the version's snapshot, write the offline store, apply and materialise to
    the online store (Feast), and build the search catalogue in object storage.
    Publishing a version (or a batch) again reuses what it wrote."""
    from feature_repo.publish import publish, publish_batch
    from training.registry import resolve_version

    settings = get_settings()
    name, version = resolve_version(model, version, settings)
    what = f"batch {batch} with {name} v{version}" if batch else f"{name} v{version}"
    with contextlib.redirect_stdout(sys.stderr), working(f"publishing {what}", as_json):
        if batch:
            result = publish_batch(name, version, settings, batch, dataset)
        else:
            result = publish(name, version, settings)
    emit(result, as_json, _print_batch if batch else _print_publish)


def _print_batch(r: dict[str, Any]) -> None:
    state = "already published" if r["reused"] else "published"
    out.print(f"{state}: batch {r['batch']} scored by model version {r['model_version']}")
    out.print(f"  offline store {r['offline_uri']}; search catalogue {r['search_uri']}")
    for target, n in sorted(r["items"].items()):
        out.print(f"  {target:<8} {n} items")


def _print_publish(r: dict[str, Any]) -> None:
    state = "already published" if r["reused"] else "published"
    out.print(f"{state}: model version {r['model_version']} -> {r['offline_uri']}")
    for view, rows in sorted(r["rows"].items()):
        out.print(f"  {view:<18} {rows} rows")
    out.print(f"online store ({r['online_store']}) materialised; repository {r['repo']}")
    search = r["search"]
    out.print(f"search catalogue {'kept' if search['reused'] else 'built'}: {search['uri']}")
    for target, t in search["targets"].items():
        kind = "exact" if t["exact"] else f"approximate ({t['index']})"
        recall = t["build_recall"]
        measured = f", recall@10 vs exact {recall['recall@10']:.3f}" if recall else ""
        out.print(f"  {target:<8} {t['items']} items, {kind}{measured}")


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
