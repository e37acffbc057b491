"""The snapshot format: what ingestion writes and training, serving and monitoring read.

A snapshot is a published (committed) prefix in the lake bucket:

    s3://<lake>/snapshots/<dataset>/<snapshot_id>/
        _COMMITTED.json            commit marker (written last; see storage.publish_dir)
        dataset.yaml               the label schema the records were checked against
        snapshot.json              SnapshotInfo: id, media config, batches, counts
        records/part-00000.parquet accepted records, preprocessed (RECORD_SCHEMA)
        quarantine/quarantine.jsonl rejected records: manifest line + reason + message
        data_docs/index.html       Great Expectations Data Docs of this run
        summary.json               the ingestion summary

Each modality stores its model input in the columns its registry module names
(`record_fields`), labels are class indices (null when absent), plus each modality's
raw statistics used by data-quality monitoring.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualmedia import modalities
from dualmedia.contract import DatasetSpec, parse_dataset_spec
from dualmedia.modalities import MediaBounds, MediaConfig
from dualmedia.storage import ObjectStore, S3Uri

SPLITS = ("train", "val", "test")
_ARROW_TYPES = {"string": pa.string(), "binary": pa.binary(), "int32": pa.int32()}


def label_column(name: str) -> str:
    return f"label__{name}"


def stat_columns(spec: DatasetSpec) -> list[str]:
    """Raw-field statistics the records of this dataset carry (the registry's, per modality)."""
    return [c for m in modalities.specs(spec.modalities) for c in m.stat_columns]


def record_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the records table for a dataset's modalities and label schema."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("created_at", pa.string()),
    ]
    for m in modalities.specs(spec.modalities):
        fields += [pa.field(name, _ARROW_TYPES[kind]) for name, kind in m.record_fields()]
    fields += [pa.field(label_column(name), pa.int32()) for name in spec.labels]
    fields += [pa.field(col, pa.float32()) for col in stat_columns(spec)]
    return pa.schema(fields)


@dataclass
class SnapshotInfo:
    """`snapshot.json`: what a snapshot is and how its media were preprocessed."""

    snapshot_id: str
    dataset: str
    source_uri: str
    media: dict[str, Any]
    batches: dict[str, str]  # batch name -> fingerprint of its objects
    counts: dict[str, int] = field(default_factory=dict)  # per split, total
    created_at: str = ""
    # Hash of everything but the batches that shapes the content (spec, bounds,
    # preprocessing): snapshots with the same recipe can share rows.
    recipe: str = ""
    bounds: dict[str, Any] = field(default_factory=dict)  # MediaBounds the records passed
    # The part of `media` chosen from the data (ingestion/derive.py); a later snapshot
    # that carries these rows over keeps it.
    derived_media: dict[str, Any] = field(default_factory=dict)

    @property
    def media_config(self) -> MediaConfig:
        return MediaConfig.from_recorded(self.media)

    @property
    def media_bounds(self) -> MediaBounds:
        return MediaBounds.from_dict(self.bounds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str, where: str) -> SnapshotInfo:
        """Parse snapshot.json as data (never code): a wrong shape is a clear error."""
        try:
            raw = json.loads(text)
            known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
            return cls(**known)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not a valid snapshot.json ({exc})") from None


def snapshot_prefix(lake_bucket: str, dataset: str, snapshot_id: str) -> S3Uri:
    return S3Uri(lake_bucket, f"snapshots/{dataset}/{snapshot_id}")


@dataclass
class SnapshotArrays:
    """Items as model inputs (what training, evaluation, publishing and monitoring consume).

    `inputs[m][i]` is item i's model input for modality m (the registry's form), None where
    the item lacks it; labels are class indices, -1 where missing."""

    ids: list[str]
    inputs: dict[str, list[Any]]
    labels: dict[str, np.ndarray]
    present: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.present = {
            m: np.array([x is not None for x in values], dtype=bool)
            for m, values in self.inputs.items()
        }

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def item(self, i: int) -> dict[str, Any]:
        """Item i's model inputs, modality -> input or None."""
        return {m: values[i] for m, values in self.inputs.items()}

    def subset(self, rows: Any) -> SnapshotArrays:
        rows = [int(r) for r in rows]
        return SnapshotArrays(
            ids=[self.ids[r] for r in rows],
            inputs={m: [v[r] for r in rows] for m, v in self.inputs.items()},
            labels={name: v[rows] for name, v in self.labels.items()},
        )


class Snapshot:
    """Read access to one committed snapshot."""

    def __init__(self, store: ObjectStore, uri: str | S3Uri) -> None:
        self.store = store
        self.uri = uri if isinstance(uri, S3Uri) else S3Uri.parse(str(uri).rstrip("/"))
        self.marker = store.committed_manifest(self.uri)  # refuses uncommitted prefixes
        info_uri = self.uri.join("snapshot.json")
        self.info = SnapshotInfo.from_json(store.read_text(info_uri), str(info_uri))
        self.spec = parse_dataset_spec(
            store.read_text(self.uri.join("dataset.yaml")), where=str(self.uri.join("dataset.yaml"))
        )

    @property
    def id(self) -> str:
        return self.info.snapshot_id

    @property
    def media(self) -> MediaConfig:
        return self.info.media_config

    @property
    def bounds(self) -> MediaBounds:
        return self.info.media_bounds

    def shard_keys(self) -> list[str]:
        return sorted(k for k in self.marker["files"] if k.startswith("records/"))

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Record shards one at a time (memory stays at one shard)."""
        for key in self.shard_keys():
            data = self.store.read_bytes(self.uri.join(key))
            yield pq.read_table(io.BytesIO(data), columns=columns)

    def table(self, columns: list[str] | None = None) -> pa.Table:
        tables = list(self.iter_tables(columns))
        if not tables:
            return record_schema(self.spec).empty_table()
        return pa.concat_tables(tables)

    def arrays(self, split: str | None = None) -> SnapshotArrays:
        """A split (or everything) decoded into arrays."""
        table = self.table()
        if split is not None:
            mask = np.asarray(table.column("split").to_pylist()) == split
            table = table.filter(pa.array(mask))
        return table_to_arrays(table, self.spec, self.media)

    def validation_arrays(self) -> SnapshotArrays:
        """The val split, or the train split of a snapshot too small to have one."""
        arrays = self.arrays("val")
        return arrays if len(arrays) else self.arrays("train")


def table_to_arrays(table: pa.Table, spec: DatasetSpec, media: MediaConfig) -> SnapshotArrays:
    """Records (RECORD_SCHEMA rows) -> model inputs, through each modality's `from_record`."""
    rows = table.to_pylist()
    inputs = {
        m.name: [m.from_record(row, media) for row in rows]
        for m in modalities.specs(spec.modalities)
    }
    labels = {
        name: np.array(
            [-1 if v is None else v for v in table.column(label_column(name)).to_pylist()],
            dtype=np.int64,
        )
        for name in spec.labels
    }
    return SnapshotArrays(ids=table.column("id").to_pylist(), inputs=inputs, labels=labels)


def latest_snapshot(
    store: ObjectStore, lake_bucket: str, dataset: str, recipe: str | None = None
) -> Snapshot | None:
    """The most recently created committed snapshot of a dataset (optionally only those
    made with the same recipe), if any."""
    base = S3Uri(lake_bucket, f"snapshots/{dataset}")
    best: tuple[str, Snapshot] | None = None
    for name in store.list_prefixes(base):
        uri = base.join(name)
        if not store.is_committed(uri):
            continue
        snap = Snapshot(store, uri)
        if recipe is not None and snap.info.recipe != recipe:
            continue
        if best is None or snap.info.created_at > best[0]:
            best = (snap.info.created_at, snap)
    return best[1] if best else None
