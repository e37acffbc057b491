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

Images are stored at model resolution (uint8 HxWx3 bytes), audio as log-mel
spectrograms (float16 n_mels x frames bytes), text as is, labels as class indices
(null when absent), plus raw statistics used by data-quality monitoring.
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

from dualmedia.contract import DatasetSpec, Modality, parse_dataset_spec
from dualmedia.media import MediaConfig
from dualmedia.storage import ObjectStore, S3Uri

SPLITS = ("train", "val", "test")
STAT_COLUMNS = (
    "text_length",
    "image_width",
    "image_height",
    "image_brightness",
    "image_saturation",
    "audio_duration_s",
    "audio_sample_rate",
    "audio_rms_db",
)


def label_column(name: str) -> str:
    return f"label__{name}"


def record_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the records table for a dataset's label schema."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("created_at", pa.string()),
        pa.field("text", pa.string()),
        pa.field("image", pa.binary()),  # uint8 [size, size, 3]
        pa.field("audio", pa.binary()),  # float16 [n_mels, frames]
        pa.field("audio_valid_frames", pa.int32()),
    ]
    fields += [pa.field(label_column(name), pa.int32()) for name in spec.labels]
    fields += [pa.field(col, pa.float32()) for col in STAT_COLUMNS]
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

    @property
    def media_config(self) -> MediaConfig:
        return MediaConfig.from_dict(self.media)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot_prefix(lake_bucket: str, dataset: str, snapshot_id: str) -> S3Uri:
    return S3Uri(lake_bucket, f"snapshots/{dataset}/{snapshot_id}")


@dataclass
class SnapshotArrays:
    """One split of a snapshot as numpy arrays (what training and evaluation consume)."""

    ids: list[str]
    text: list[str | None]
    image: np.ndarray  # N x S x S x 3 uint8 (zeros where missing)
    audio: np.ndarray  # N x n_mels x frames float32 (silence where missing)
    audio_valid_frames: np.ndarray  # N int
    present: dict[Modality, np.ndarray]  # modality -> N bool
    labels: dict[str, np.ndarray]  # label -> N int (-1 where missing)

    def __len__(self) -> int:
        return len(self.ids)


class Snapshot:
    """Read access to one committed snapshot."""

    def __init__(self, store: ObjectStore, uri: str | S3Uri) -> None:
        self.store = store
        self.uri = uri if isinstance(uri, S3Uri) else S3Uri.parse(str(uri).rstrip("/"))
        self.marker = store.committed_manifest(self.uri)  # refuses uncommitted prefixes
        self.info = SnapshotInfo(**json.loads(store.read_text(self.uri.join("snapshot.json"))))
        self.spec = parse_dataset_spec(
            store.read_text(self.uri.join("dataset.yaml")), where=str(self.uri.join("dataset.yaml"))
        )

    @property
    def id(self) -> str:
        return self.info.snapshot_id

    @property
    def media(self) -> MediaConfig:
        return self.info.media_config

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


def table_to_arrays(table: pa.Table, spec: DatasetSpec, media: MediaConfig) -> SnapshotArrays:
    n = table.num_rows
    size = media.image_size
    image = np.zeros((n, size, size, 3), dtype=np.uint8)
    audio = np.full((n, media.n_mels, media.audio_frames), np.log(1e-6), dtype=np.float32)
    images = table.column("image").to_pylist()
    audios = table.column("audio").to_pylist()
    for i, blob in enumerate(images):
        if blob is not None:
            image[i] = np.frombuffer(blob, dtype=np.uint8).reshape(size, size, 3)
    for i, blob in enumerate(audios):
        if blob is not None:
            spec_ = np.frombuffer(blob, dtype=np.float16).reshape(media.n_mels, media.audio_frames)
            audio[i] = spec_.astype(np.float32)
    text = table.column("text").to_pylist()
    present = {
        Modality.TEXT: np.array([t is not None for t in text], dtype=bool),
        Modality.IMAGE: np.array([b is not None for b in images], dtype=bool),
        Modality.AUDIO: np.array([b is not None for b in audios], dtype=bool),
    }
    labels = {
        name: np.array(
            [-1 if v is None else v for v in table.column(label_column(name)).to_pylist()],
            dtype=np.int64,
        )
        for name in spec.labels
    }
    valid = table.column("audio_valid_frames").to_pylist()
    return SnapshotArrays(
        ids=table.column("id").to_pylist(),
        text=text,
        image=image,
        audio=audio,
        audio_valid_frames=np.array([0 if v is None else v for v in valid], dtype=np.int64),
        present=present,
        labels=labels,
    )


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
