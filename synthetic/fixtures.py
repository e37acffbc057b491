"""Snapshots for tests and demos without ingestion: a local dataset folder in the contract
layout (e.g. from `synthetic.generate_dataset`) turned into snapshot records.

It follows the snapshot format of `dualmedia.snapshot` (records Parquet with
`record_schema`, `snapshot.json`, `dataset.yaml`, published with `ObjectStore.publish_dir`)
but validates nothing: records that cannot be decoded raise. Ingestion is the real path.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualmedia import modalities
from dualmedia.contract import DATASET_FILE, MANIFEST_FILE, DatasetSpec, load_dataset_spec
from dualmedia.datasets import find_batches
from dualmedia.modalities import MediaConfig
from dualmedia.snapshot import (
    SnapshotArrays,
    SnapshotInfo,
    label_column,
    record_schema,
    snapshot_prefix,
    stat_columns,
    table_to_arrays,
)
from dualmedia.storage import ObjectStore, S3Uri
from ingestion.checks import split_for
from synthetic import GeneratorKnobs, generate_dataset

RECORDS_FILE = "records/part-00000.parquet"
# Fixture snapshots hold out more than ingestion does: small test sets need items to score.
FIXTURE_SPLITS = (0.7, 0.15, 0.15)


def _record_row(
    record: dict[str, Any], batch_dir: Path, batch: str, spec: DatasetSpec, media: MediaConfig
) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in stat_columns(spec)}
    row.update(
        id=record["id"],
        batch=batch,
        split=record.get("split") or split_for(record["id"], FIXTURE_SPLITS),
        created_at=record.get("created_at"),
    )
    bounds = spec.media_bounds()
    readings = {}
    lacking = {str(m) for m in spec.modalities if not record.get(str(m))}
    for m in modalities.specs(spec.modalities):
        value = record.get(m.name)
        if not value:
            continue
        raw = value if m.inline else (batch_dir / value).read_bytes()
        readings[m.name] = m.read(raw, bounds.section(m.name), media, lacking)
    item = modalities.item_reading(readings, spec.modalities)
    for name, model_input in item.inputs.items():
        row.update(modalities.get(name).to_record(model_input))
        row.update(item.stats[name])
    labels = record.get("labels") or {}
    for name in spec.labels:
        value = labels.get(name)
        row[label_column(name)] = None if value is None else spec.encode_label(name, value)
    return row


def records_table(dataset_dir: Path, media: MediaConfig) -> tuple[pa.Table, DatasetSpec]:
    """Every record of every batch of a local dataset folder, preprocessed."""
    dataset_dir = Path(dataset_dir)
    spec = load_dataset_spec(dataset_dir)
    rows = []
    for batch in find_batches(dataset_dir):
        batch_dir = dataset_dir / batch
        for line in (batch_dir / MANIFEST_FILE).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(_record_row(json.loads(line), batch_dir, batch, spec, media))
    schema = record_schema(spec)
    return pa.Table.from_pylist(rows, schema=schema), spec


def arrays_from_folder(
    dataset_dir: Path, split: str | None = None, media: MediaConfig | None = None
) -> SnapshotArrays:
    """A split of a local dataset folder as SnapshotArrays (no object storage involved);
    `media`: the dataset.yaml's own by default, as ingestion takes it."""
    media = media or load_dataset_spec(dataset_dir).media_config()
    table, spec = records_table(dataset_dir, media)
    if split is not None:
        table = table.filter(pa.array(np.asarray(table.column("split").to_pylist()) == split))
    return table_to_arrays(table, spec, media)


def write_snapshot_folder(
    dataset_dir: Path, out_dir: Path, media: MediaConfig | None = None
) -> SnapshotInfo:
    """Write records Parquet, snapshot.json and dataset.yaml; the id hashes the records.
    `media`: the dataset.yaml's own by default, as ingestion takes it."""
    media = media or load_dataset_spec(dataset_dir).media_config()
    table, spec = records_table(dataset_dir, media)
    out_dir = Path(out_dir)
    (out_dir / "records").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / RECORDS_FILE)
    digest = hashlib.sha256((out_dir / RECORDS_FILE).read_bytes())
    digest.update(json.dumps(media.to_dict(), sort_keys=True).encode())
    splits = table.column("split").to_pylist()
    batches = sorted(set(table.column("batch").to_pylist()))
    info = SnapshotInfo(
        snapshot_id=digest.hexdigest()[:16],
        dataset=spec.name,
        source_uri=str(dataset_dir),
        media=media.to_dict(),
        batches={b: "local" for b in batches},
        counts={**{s: splits.count(s) for s in ("train", "val", "test")}, "total": len(splits)},
        created_at=str(max(table.column("created_at").to_pylist(), default="") or ""),
    )
    (out_dir / "snapshot.json").write_text(json.dumps(info.to_dict(), indent=2))
    (out_dir / DATASET_FILE).write_text(spec.to_yaml(), encoding="utf-8")
    return info


def publish_snapshot(
    store: ObjectStore, lake_bucket: str, dataset_dir: Path, media: MediaConfig | None = None
) -> str:
    """Publish a local dataset folder as a committed snapshot; returns its s3:// URI.
    Idempotent: the same records give the same id, and a committed one is reused."""
    with tempfile.TemporaryDirectory(prefix="dualmedia-snapshot-") as tmp:
        info = write_snapshot_folder(dataset_dir, Path(tmp), media)
        uri: S3Uri = snapshot_prefix(lake_bucket, info.dataset, info.snapshot_id)
        store.ensure_bucket(lake_bucket)
        if not store.is_committed(uri):
            store.publish_dir(Path(tmp), uri, metadata={"snapshot_id": info.snapshot_id})
    return str(uri)


def synthetic_snapshot(
    store: ObjectStore,
    lake_bucket: str,
    workdir: Path,
    n: int,
    seed: int = 0,
    knobs: GeneratorKnobs | None = None,
    **generate_options: Any,
) -> str:
    """Generate a synthetic dataset of `n` items under `workdir` and publish it;
    `generate_options` go to `generate_dataset` (e.g. video_rate, modalities)."""
    suffix = "".join(f"-{k}={v}" for k, v in sorted(generate_options.items()))
    folder = Path(workdir) / f"synthetic-{n}-{seed}{suffix}".replace(" ", "")
    if not (folder / DATASET_FILE).is_file():
        generate_dataset(folder, n, seed=seed, knobs=knobs or GeneratorKnobs(), **generate_options)
    return publish_snapshot(store, lake_bucket, folder)


def random_arrays(
    spec: DatasetSpec,
    n: int,
    media: MediaConfig | None = None,
    missing_rate: float = 0.2,
    seed: int = 0,
) -> SnapshotArrays:
    """Random SnapshotArrays for unit tests: noise media, short texts, random labels;
    each modality missing with `missing_rate`, at least one kept per item."""
    media = media or MediaConfig()
    rng = np.random.default_rng(seed)
    names = modalities.ordered(spec.modalities)
    present = rng.random((n, len(names))) >= missing_rate
    present[~present.any(axis=1), 0] = True
    labels = {}
    for name, label in spec.labels.items():
        values = rng.integers(0, len(label.classes), n)
        values[rng.random(n) < 0.1] = -1  # some labels missing
        labels[name] = values.astype(np.int64)
    inputs = {
        m: [modalities.get(m).random_input(media, rng) if present[i, j] else None for i in range(n)]
        for j, m in enumerate(names)
    }
    return SnapshotArrays(ids=[f"item-{i:04d}" for i in range(n)], inputs=inputs, labels=labels)
