"""The served-request log against a real S3 server that goes away and comes back: the
rows recorded meanwhile are kept and written once it is back; nothing is dropped."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore, S3Uri
from serving.served_log import ServedLog
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def _record(log: ServedLog, i: int) -> None:
    inputs = SimpleNamespace(stats={"text_length": float(i)}, modalities=["text"])
    log.record(SimpleNamespace(inputs=inputs), {"modality": "text", "embedding": [0.6, 0.8]})


def test_rows_recorded_while_s3_is_down_are_written_when_it_is_back(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "stack", s3_max_attempts=1)
    stack = Stack(settings, only=["s3"])
    stack.up()
    try:
        prefix = S3Uri(settings.lake_bucket, "monitoring/ds/served")
        log = ServedLog(ObjectStore(settings), prefix, "embed", "7", flush_every=1000)
        for i in range(3):
            _record(log, i)
        assert log.flush() is True
        stack.down()
        for i in range(3, 10):
            _record(log, i)
        assert log.flush() is False  # S3 is down: the rows stay in the buffer
        assert log.stats()["buffered"] == 7 and log.failed_writes >= 1
        stack.up()
        assert log.flush() is True
        assert log.stats() == {"buffered": 0, "written": 10, "dropped": 0, "failed_writes": 1}
        store = ObjectStore(settings)
        stats = []
        for obj in store.list(prefix):
            table = pq.read_table(io.BytesIO(store.read_bytes(S3Uri(prefix.bucket, obj.key))))
            stats += table.column("stats").to_pylist()
        assert sorted(stats) == sorted(f'{{"text_length": {float(i)}}}' for i in range(10))
    finally:
        stack.down()
