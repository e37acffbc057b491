"""`dualmedia deploy` and `dualmedia rollback`."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, ModelNameOpt, VersionOpt, emit, out, working
from dualmedia.settings import get_settings


def deploy_command(
    model: ModelNameOpt = None,
    version: VersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the version's TorchServe archive and serve it on embed, search and insights.

    The new version becomes the default only after a smoke request to each endpoint
    passes; the previous one stays registered for rollback. Needs the version's
    features published first (`dualmedia publish`): they are the search catalogue.
    """
    from serving.release import build_release, deploy_release
    from training.registry import resolve_version

    settings = get_settings()
    name, version = resolve_version(model, version, settings)
    with contextlib.redirect_stdout(sys.stderr):
        with working(f"building the archive of {name} v{version}", as_json):
            built = build_release(name, version, settings)
        with working(f"deploying v{version} (register, smoke-test, make default)", as_json):
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
    from training.registry import model_name
    from training.registry import rollback as registry_rollback

    settings = get_settings()
    name = model_name(model, settings)
    with contextlib.redirect_stdout(sys.stderr):
        with working(f"moving {name}'s champion back", as_json):
            registry = registry_rollback(name, settings)
        with working("serving the previous version", as_json):
            serving = serving_rollback(settings)
        with working(f"publishing v{registry['champion']}'s features", as_json):
            features = publish(name, registry["champion"], settings)
    result = {"registry": registry, "serving": serving, "features": features["offline_uri"]}
    emit(result, as_json, _print_rollback)


def _print_rollback(r: dict[str, Any]) -> None:
    registry, serving = r["registry"], r["serving"]
    out.print(
        f"champion is v{registry['champion']} again (was v{registry['rolled_back_from']}); "
        f"endpoints serve version {serving['version']}"
    )


def deployments_command(
    restore: Annotated[
        bool,
        typer.Option(
            "--restore",
            help="Re-register what the record holds on a server that lost it (a restart).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """What is deployed: the record in object storage beside the serving backend's live
    state. With --restore, re-register the record and say what failed (exit code 1 when
    anything did). `dualmedia up` runs `deployments --restore` after TorchServe starts."""
    from serving.deploy import restore as serving_restore
    from serving.deploy import state

    settings = get_settings()
    if not restore:
        emit(state(settings), as_json, _print_state)
        return
    with contextlib.redirect_stdout(sys.stderr):
        result = serving_restore(settings)
    emit(result, as_json, _print_restore)
    if result["failed"]:
        raise typer.Exit(1)


def _print_state(r: dict[str, Any]) -> None:
    out.print(f"backend {r['backend']}, record {r['record']}")
    for endpoint, e in r["endpoints"].items():
        workers = ", ".join(f"v{v}: {n} workers" for v, n in e["live"]["workers"].items())
        sync = "" if e["in_sync"] else "  [yellow](differs from the record)[/]"
        out.print(
            f"  {endpoint:<9} default v{e['live']['default']} (recorded v{e['recorded']['default']}"
            f", previous v{e['recorded']['previous']}); {workers or 'nothing registered'}{sync}"
        )


def _print_restore(r: dict[str, Any]) -> None:
    out.print(
        f"{r['status']}: {len(r['restored'])} registered, {len(r['present'])} already there "
        f"(record {r['record']})"
    )
    for f in r["failed"]:
        out.print(
            f"  [red]failed[/] {f['endpoint']} version {f['version']} ({f['archive']}): "
            f"{f['error']}"
        )


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("rollback")(rollback_command)
    app.command("deployments")(deployments_command)
