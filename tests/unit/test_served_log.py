"""The served-request log batches rows and writes them off the request path."""

from __future__ import annotations

import io
import threading
import time

import pyarrow.parquet as pq

from dualmedia.storage import S3Uri
from serving.protocol import Inputs, Request
from serving.served_log import ServedLog


class RecordingStore:
    """Stands in for ObjectStore: keeps what was written and on which thread."""

    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}
        self.threads: list[str] = []

    def write_bytes(self, uri: S3Uri, data: bytes) -> None:
        self.threads.append(threading.current_thread().name)
        self.written[str(uri)] = data


def _record(log: ServedLog, i: int) -> None:
    request = Request("embed", Inputs(text=f"review {i}", stats={"text_length": 8.0}))
    log.record(request, {"modality": "text", "embedding": [0.6, 0.8]})


def _rows(store: RecordingStore) -> int:
    return sum(pq.read_table(io.BytesIO(data)).num_rows for data in store.written.values())


def test_full_buffer_is_written_on_a_background_thread_and_nothing_is_lost() -> None:
    store = RecordingStore()
    prefix = S3Uri("lake", "monitoring/ds/served")
    log = ServedLog(store, prefix, "embed", "3", flush_every=4)  # type: ignore[arg-type]
    for i in range(4):
        _record(log, i)
    for _ in range(100):
        if store.written:
            break
        time.sleep(0.02)
    assert store.threads and store.threads[0] != threading.current_thread().name
    for i in range(4, 7):
        _record(log, i)
    log.flush()  # what atexit does when the worker stops
    assert _rows(store) == 7
    table = pq.read_table(io.BytesIO(next(iter(store.written.values()))))
    assert table.column("model_version").to_pylist()[0] == "3"
    assert all(k.startswith("s3://lake/monitoring/ds/served/") for k in store.written)
