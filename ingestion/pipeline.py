"""Ingestion as three idempotent steps: plan (pull) → validate → publish the snapshot.

Each step is a plain function taking and returning URIs and small summaries, so the
DAG passes only references through XCom and the CLI runs the three in a row. State
between steps lives in object storage under the run prefix
`s3://<lake>/ingest-runs/<dataset>/<snapshot_id>/`:

    plan.json            what to do: batches, which are new, the snapshot id
    records/<batch>/     accepted rows of new batches (Parquet shards)
    quarantine/<batch>.jsonl   rejected lines with reason and message
    batches/<batch>.json       a validated batch's summary, claimed ids, GX result
    data_docs/           Great Expectations Data Docs
    validated.json       the validation summary (written last: the step is done)

Validation (ingestion/validation.py) runs per batch, so the DAG maps it over the new
batches, and then once over all of them.

The snapshot id is a content hash of the dataset spec, every batch's objects, the
ingestion bounds and the preprocessing: unchanged input gives the same id, and a
snapshot that already exists is returned without any work.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dualmedia.contract import parse_dataset_spec
from dualmedia.settings import Settings
from dualmedia.snapshot import (
    SPLITS,
    Snapshot,
    SnapshotInfo,
    latest_snapshot,
    record_schema,
    snapshot_prefix,
)
from dualmedia.storage import ObjectStore, S3Uri
from ingestion.config import IngestConfig
from ingestion.derive import derive_media
from ingestion.runs import IngestError, load_plan, run_prefix
from ingestion.shards import ShardWriter
from ingestion.source import DatasetSource
from ingestion.validation import Progress, validate_batches

# Bump when decoding or preprocessing changes: old snapshots then stop matching.
PREPROCESS_VERSION = "3"  # 3: audio features (Whisper's by default)

__all__ = ["IngestError", "ingest", "plan_ingest", "publish_snapshot"]


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# ---- step 1: plan ------------------------------------------------------------------------
def plan_ingest(
    dataset_uri: str, settings: Settings, config: IngestConfig | None = None
) -> dict[str, Any]:
    """Read the dataset's spec and batch listing, choose the preprocessing that follows the
    data (a sample of the media, only when no earlier snapshot of the recipe fixes it),
    work out the snapshot id and what is new since the last snapshot. Fails before reading
    anything else when `dataset.yaml` is missing or invalid."""
    config = config or IngestConfig()
    store = ObjectStore(settings)
    source = DatasetSource(store, dataset_uri)
    spec_text = source.spec_text()
    spec = parse_dataset_spec(spec_text, where=str(source.uri.join("dataset.yaml")))
    batches = source.batches()
    if not batches:
        raise IngestError(f"{source.uri}: no batch found (a batch is a folder with manifest.jsonl)")
    # The source location is part of the recipe: two raw datasets that share a name
    # never share snapshots.
    recipe = _hash(str(source.uri), spec_text, config.content_key(), PREPROCESS_VERSION)[:16]
    fingerprints = {b.name: b.fingerprint for b in batches}
    previous = latest_snapshot(store, settings.lake_bucket, spec.name, recipe=recipe)
    carried: list[str] = []
    if previous is not None:
        carried = [b for b, fp in fingerprints.items() if previous.info.batches.get(b) == fp]
        # Rows carried over were preprocessed with these: new rows must match them.
        derived = previous.info.derived_media
    elif config.derive_media:
        derived = derive_media(source, batches, spec, config)
    else:
        derived = {}
    config = config.model_copy(update={"derived_media": derived})
    snapshot_id = _hash(recipe, fingerprints, derived)[:16]
    target = snapshot_prefix(settings.lake_bucket, spec.name, snapshot_id)
    run = run_prefix(settings.lake_bucket, spec.name, snapshot_id)
    new_batches = sorted(set(fingerprints) - set(carried))
    by_name = {b.name: b for b in batches}
    new_records = sum(
        sum(1 for line in source.manifest_lines(by_name[n]) if line.strip()) for n in new_batches
    )
    plan = {
        "dataset": spec.name,
        "dataset_uri": str(source.uri),
        "snapshot_id": snapshot_id,
        "snapshot_uri": str(target),
        "run_uri": str(run),
        "recipe": recipe,
        "batches": fingerprints,
        "new_batches": new_batches,
        "new_records": new_records,
        "carried_batches": sorted(carried),
        "previous_snapshot_uri": str(previous.uri) if previous and carried else None,
        "up_to_date": store.is_committed(target),
        "config": config.model_dump(mode="json"),
        "spec_text": spec_text,
    }
    store.write_json(run.join("plan.json"), plan)
    return {
        "plan_uri": str(run.join("plan.json")),
        "snapshot_id": snapshot_id,
        "snapshot_uri": str(target),
        "up_to_date": plan["up_to_date"],
        "new_batches": plan["new_batches"],
        "new_records": new_records,
        "carried_batches": plan["carried_batches"],
        "derived_media": derived,
    }


# ---- step 3: publish the snapshot -------------------------------------------------------
def publish_snapshot(plan_uri: str, settings: Settings) -> dict[str, Any]:
    """Assemble carried-over and newly validated rows into the snapshot and publish it
    atomically (nothing is visible until the commit marker is written)."""
    store = ObjectStore(settings)
    plan = load_plan(store, plan_uri)
    target = S3Uri.parse(plan["snapshot_uri"])
    run = S3Uri.parse(plan["run_uri"])
    if store.is_committed(target):
        summary = json.loads(store.read_text(target.join("summary.json")))
        return {**summary, "reused": True}
    validated_uri = run.join("validated.json")
    if not store.exists(validated_uri):
        raise IngestError(f"{plan['run_uri']}: not validated yet; run the validate step first")
    validated = json.loads(store.read_text(validated_uri))
    spec = parse_dataset_spec(plan["spec_text"])
    config = IngestConfig.model_validate(plan["config"])
    schema = record_schema(spec)
    with tempfile.TemporaryDirectory(prefix="dualmedia-snapshot-") as tmp:
        out = Path(tmp) / "snapshot"
        writer = ShardWriter(out / "records", schema, config.shard_rows)
        quarantine_lines: list[str] = []
        carried_read = carried_quarantined = 0
        if plan["previous_snapshot_uri"]:
            previous = Snapshot(store, plan["previous_snapshot_uri"])
            carried = set(plan["carried_batches"])
            for table in previous.iter_tables():
                mask = [b in carried for b in table.column("batch").to_pylist()]
                kept = table.filter(mask)
                writer.add_table(kept.select(schema.names).cast(schema))
                carried_read += kept.num_rows
            for line in _previous_quarantine(store, previous):
                if json.loads(line)["batch"] in carried:
                    quarantine_lines.append(line)
                    carried_quarantined += 1
        carried_accepted = carried_read
        for batch in plan["new_batches"]:
            for obj in store.list(run.join("records", batch)):
                data = store.read_bytes(S3Uri(run.bucket, obj.key))
                writer.add_table(pq.read_table(io.BytesIO(data)).cast(schema))
            q = run.join("quarantine", f"{batch}.jsonl")
            if store.exists(q):
                quarantine_lines += [x for x in store.read_text(q).splitlines() if x.strip()]
        writer.close()
        split_counts = _split_counts(writer.paths)
        (out / "quarantine").mkdir(parents=True)
        (out / "quarantine" / "quarantine.jsonl").write_text(
            "".join(line + "\n" for line in quarantine_lines), encoding="utf-8"
        )
        store.download_dir(run.join("data_docs"), out / "data_docs")
        (out / "dataset.yaml").write_text(plan["spec_text"], encoding="utf-8")
        info = SnapshotInfo(
            snapshot_id=plan["snapshot_id"],
            dataset=plan["dataset"],
            source_uri=plan["dataset_uri"],
            media=config.media_config(spec).to_dict(),
            bounds=config.media_bounds(spec).to_dict(),
            derived_media=config.derived_media,
            batches=plan["batches"],
            counts=split_counts,
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            recipe=plan["recipe"],
        )
        (out / "snapshot.json").write_text(json.dumps(info.to_dict(), indent=2))
        reasons = Counter(validated.get("reasons", {}))
        for line in quarantine_lines[:carried_quarantined]:
            reasons[json.loads(line)["reason"]] += 1
        summary = {
            "status": "ok",
            "dataset": plan["dataset"],
            "snapshot_id": plan["snapshot_id"],
            "snapshot_uri": str(target),
            "new_batches": plan["new_batches"],
            "carried_batches": plan["carried_batches"],
            "read": validated.get("read", 0) + carried_accepted + carried_quarantined,
            "accepted": split_counts["total"],
            "quarantined": len(quarantine_lines),
            "reasons": dict(sorted(reasons.items())),
            "splits": {k: v for k, v in split_counts.items() if k != "total"},
            "derived_media": config.derived_media,
            "data_docs_uri": str(target.join("data_docs", "index.html")),
            "data_docs_local": validated.get("data_docs_local"),
            "quarantine_uri": str(target.join("quarantine", "quarantine.jsonl")),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        store.publish_dir(out, target, metadata={"snapshot_id": plan["snapshot_id"]})
    return {**summary, "reused": False}


def _previous_quarantine(store: ObjectStore, previous: Snapshot) -> list[str]:
    uri = previous.uri.join("quarantine", "quarantine.jsonl")
    if not store.exists(uri):
        return []
    return [line for line in store.read_text(uri).splitlines() if line.strip()]


def _split_counts(paths: list[Path]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for path in paths:
        for split in pq.read_table(path, columns=["split"]).column("split").to_pylist():
            counts[split] += 1
    counts["total"] = sum(counts.values())
    return counts


# ---- all three ---------------------------------------------------------------------------
def ingest(
    dataset_uri: str,
    settings: Settings,
    config: IngestConfig | None = None,
    progress: Progress | None = None,
    docs_dir: Path | None = None,
) -> dict[str, Any]:
    """Plan, validate and publish in one go (what `dualmedia ingest` runs)."""
    plan = plan_ingest(dataset_uri, settings, config)
    if plan["up_to_date"]:
        store = ObjectStore(settings)
        summary = json.loads(
            store.read_text(S3Uri.parse(plan["snapshot_uri"]).join("summary.json"))
        )
        return {**summary, "reused": True}
    validate_batches(plan["plan_uri"], settings, progress=progress, docs_dir=docs_dir)
    return publish_snapshot(plan["plan_uri"], settings)
