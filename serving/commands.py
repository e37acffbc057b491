"""`dualmedia deploy` and `dualmedia rollback`."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, emit, out
from dualmedia.settings import get_settings

ModelNameOpt = Annotated[
    str | None,
    typer.Option("--model", help="Registered model name (default: DUALMEDIA_MODEL_NAME)."),
]


def deploy_command(
    model: ModelNameOpt = None,
    version: Annotated[
        str | None, typer.Option(help="Model version to serve (default: the champion).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the version's TorchServe archive and serve it on embed, search and insights.

    The new version becomes the default only after a smoke request to each endpoint
    passes; the previous one stays registered for rollback. Needs the version's
    features published first (`dualmedia publish`): they are the search catalogue.
    """
    from serving.release import build_release, deploy_release
    from training.registry import champion_version

    settings = get_settings()
    name = model or settings.model_name
    version = version or champion_version(name, settings)
    if version is None:
        raise RuntimeError(f"{name}: no champion yet; give --version or run `dualmedia promote`")
    with contextlib.redirect_stdout(sys.stderr):
        built = build_release(name, version, settings)
        result = deploy_release(name, version, settings)
    emit({**result, "archive": built["archive_uri"]}, as_json, _print_deploy)


def _print_deploy(r: dict[str, Any]) -> None:
    out.print(f"{r['status']}: version {r['version']} ({r['archive']})")
    for endpoint, url in (r.get("endpoints") or {}).items():
        out.print(f"  {endpoint:<9} {url}")


def rollback_command(model: ModelNameOpt = None, as_json: JsonOpt = False) -> None:
    """Go back to the previous champion: in the registry, on TorchServe and in the
    online feature store."""
    from feature_repo.publish import publish
    from serving.deploy import rollback as serving_rollback
    from training.registry import rollback as registry_rollback

    settings = get_settings()
    name = model or settings.model_name
    with contextlib.redirect_stdout(sys.stderr):
        registry = registry_rollback(name, settings)
        serving = serving_rollback(settings)
        features = publish(name, registry["champion"], settings)
    result = {"registry": registry, "serving": serving, "features": features["offline_uri"]}
    emit(result, as_json, _print_rollback)


def _print_rollback(r: dict[str, Any]) -> None:
    registry, serving = r["registry"], r["serving"]
    out.print(
        f"champion is v{registry['champion']} again (was v{registry['rolled_back_from']}); "
        f"endpoints serve version {serving['version']}"
    )


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("rollback")(rollback_command)
