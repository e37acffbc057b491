"""`dualmedia ingest`: pull a dataset from S3, validate it, publish a snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, console, emit, out, progress_bar
from dualmedia.settings import get_settings


def ingest_command(
    dataset_uri: Annotated[
        str, typer.Argument(help="Dataset prefix, e.g. s3://dualmedia-raw/customer-feedback.")
    ],
    config: Annotated[
        Path | None, typer.Option(help="YAML with ingestion bounds (see ingestion/config.py).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset's new batches and publish a content-hashed snapshot.

    Every record is accepted or quarantined with a reason; a batch rejecting too much
    or failing its Great Expectations suite fails the command (reports still written).
    Unchanged input returns the existing snapshot without any work.
    """
    from ingestion.config import IngestConfig
    from ingestion.pipeline import plan_ingest, publish_snapshot
    from ingestion.validation import validate_batches

    settings = get_settings()
    cfg = IngestConfig.from_yaml(config) if config else IngestConfig()
    plan = plan_ingest(dataset_uri, settings, cfg)
    if plan["up_to_date"]:
        console.print(f"snapshot {plan['snapshot_id']} is up to date: nothing to do")
        result = publish_snapshot(plan["plan_uri"], settings)
    else:
        total = plan["new_records"]
        docs = settings.home_dir / "data_docs" / plan["snapshot_id"]
        with progress_bar("validating records", total) as advance:
            validate_batches(plan["plan_uri"], settings, progress=advance, docs_dir=docs)
        result = publish_snapshot(plan["plan_uri"], settings)
    emit(result, as_json, _print_summary)


def _print_summary(r: dict[str, Any]) -> None:
    state = "reused" if r.get("reused") else "published"
    out.print(f"snapshot [bold]{r['snapshot_id']}[/] {state}: {r['snapshot_uri']}")
    out.print(
        f"records: {r['read']} read = {r['accepted']} accepted + {r['quarantined']} quarantined"
        f"  (splits: {', '.join(f'{k} {v}' for k, v in r['splits'].items())})"
    )
    for reason, count in r["reasons"].items():
        out.print(f"  quarantined {count:>5}  {reason}")
    for modality, fields in (r.get("derived_media") or {}).items():
        chosen = ", ".join(f"{k} {v}" for k, v in fields.items())
        out.print(f"{modality} preprocessing from the data: {chosen} (dataset.yaml media: wins)")
    out.print(f"quarantine: {r['quarantine_uri']}")
    out.print(f"Data Docs:  {r['data_docs_uri']}")
    if r.get("data_docs_local"):
        out.print(f"            file://{r['data_docs_local']}")


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_command)
