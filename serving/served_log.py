"""What the endpoints served, recorded for drift monitoring (the "current" window).

Each served item becomes one row: time, task, model version, raw-field statistics,
which modalities it had, its embeddings and (for insights) its predicted classes.
Rows are buffered in the worker and written to object storage as small Parquet
files under `s3://<lake>/monitoring/<dataset>/served/`; recording never fails or
slows a request beyond appending to a list (writes happen on a background thread).
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri

log = logging.getLogger(__name__)
ARCHIVE_INFO = "archive.json"
SERVED_SCHEMA = pa.schema(
    [
        pa.field("served_at", pa.string()),
        pa.field("task", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("stats", pa.string()),  # JSON: raw-field statistics of the inputs
        pa.field("modalities", pa.list_(pa.string())),
        pa.field("embeddings", pa.string()),  # JSON: modality -> vector
        pa.field("predictions", pa.string()),  # JSON: label -> class (insights only)
    ]
)


def served_prefix(settings: Settings, dataset: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"monitoring/{dataset}/served")


class ServedLog:
    def __init__(
        self,
        store: ObjectStore | None,
        prefix: S3Uri | None,
        task: str,
        model_version: str,
        flush_every: int = 32,
        flush_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.task = task
        self.model_version = model_version
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.rows: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        self.flushing = threading.Event()  # set while a background flush runs
        atexit.register(self.flush)

    @classmethod
    def from_archive(cls, model_dir: str, task: str, model_version: str) -> ServedLog:
        """A log for this worker; a no-op when the archive or settings say no storage."""
        info_path = Path(model_dir) / ARCHIVE_INFO
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            settings = Settings()
            return cls(
                ObjectStore(settings), served_prefix(settings, info["dataset"]), task, model_version
            )
        except Exception as exc:  # monitoring must never stop serving
            log.warning("served-request log disabled: %s", exc)
            return cls(None, None, task, model_version)

    def record(
        self, request: Any, result: dict[str, Any], embeddings: dict[str, Any] | None = None
    ) -> None:
        if embeddings is None and "embedding" in result:
            embeddings = {result["modality"]: result["embedding"]}
        predictions = {k: v["class"] for k, v in result.get("predictions", {}).items()}
        row = {
            "served_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "task": self.task,
            "model_version": self.model_version,
            "stats": json.dumps(request.inputs.stats),
            "modalities": [m.value for m in request.inputs.modalities],
            "embeddings": json.dumps(embeddings or {}),
            "predictions": json.dumps(predictions),
        }
        with self.lock:
            self.rows.append(row)
            due = (
                len(self.rows) >= self.flush_every
                or time.monotonic() - self.last_flush > self.flush_seconds
            )
        if due and not self.flushing.is_set():
            # Off the request path: the answer does not wait for Parquet and S3.
            self.flushing.set()
            threading.Thread(target=self._flush_in_background, daemon=True).start()

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        finally:
            self.flushing.clear()

    def flush(self) -> None:
        with self.lock:
            rows, self.rows = self.rows, []
            self.last_flush = time.monotonic()
        if not rows or self.store is None or self.prefix is None:
            return
        day = rows[0]["served_at"][:10]
        name = f"{rows[0]['served_at'][:19].replace(':', '')}-{uuid.uuid4().hex[:8]}.parquet"
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SERVED_SCHEMA), buffer)
        try:
            self.store.write_bytes(self.prefix.join(day, name), buffer.getvalue())
        except Exception as exc:  # never fail a request over monitoring
            log.warning("could not write %d served records: %s", len(rows), exc)
