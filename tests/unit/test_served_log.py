"""The served-request log batches rows and writes them off the request path."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from dualmedia.storage import S3Uri
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
    # What the handler passes: a parsed request with its inputs' stats and modalities.
    inputs = SimpleNamespace(text=f"review {i}", stats={"text_length": 8.0}, modalities=["text"])
    request = SimpleNamespace(task="embed", inputs=inputs)
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


# ---- faults that lose nothing (issue 14) ------------------------------------------------
class FlakyStore(RecordingStore):
    """Fails every write while `down` is set, like an unreachable S3."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts = 0

    def write_bytes(self, uri: S3Uri, data: bytes) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("S3 unreachable")
        super().write_bytes(uri, data)


def test_a_failed_write_keeps_its_rows_and_the_next_flush_writes_them() -> None:
    store = FlakyStore()
    log = ServedLog(store, S3Uri("lake", "m/ds/served"), "embed", "3", flush_every=1000)  # type: ignore[arg-type]
    for i in range(5):
        _record(log, i)
    assert log.flush() is False  # S3 down: nothing written, nothing lost
    assert log.stats() == {"buffered": 5, "written": 0, "dropped": 0, "failed_writes": 1}
    assert log.retry_at > time.monotonic()  # background flushes back off
    _record(log, 5)
    store.down = False
    assert log.flush() is True
    assert _rows(store) == 6 and log.stats()["written"] == 6 and log.dropped == 0
    table = pq.read_table(io.BytesIO(next(iter(store.written.values()))))
    assert table.column("stats").to_pylist()[0] == '{"text_length": 8.0}'  # oldest first


def test_the_buffer_is_bounded_and_what_it_drops_is_counted() -> None:
    store = FlakyStore()
    reported: list[int] = []
    log = ServedLog(
        store,  # type: ignore[arg-type]
        S3Uri("lake", "m/ds/served"),
        "embed",
        "3",
        flush_every=1000,
        max_rows=10,
        on_drop=reported.append,
    )
    for i in range(25):
        _record(log, i)
    assert log.flush() is False
    assert log.dropped == 15 and sum(reported) == 15
    assert log.stats()["buffered"] == 10
    store.down = False
    assert log.flush() is True and _rows(store) == 10  # the newest ten


def test_a_stopping_worker_counts_rows_it_could_not_write() -> None:
    store = FlakyStore()
    log = ServedLog(store, S3Uri("lake", "m/ds/served"), "embed", "3", flush_every=1000)  # type: ignore[arg-type]
    for i in range(3):
        _record(log, i)
    log.close()  # what SIGTERM and atexit run: S3 is still down
    assert log.dropped == 3 and log.stats()["buffered"] == 0


CHILD = """
import json, os, signal, sys, time
from pathlib import Path
from types import SimpleNamespace
from dualmedia.storage import S3Uri
from serving.served_log import ServedLog

out = Path(sys.argv[1])
mode = sys.argv[2]

class FolderStore:
    def write_bytes(self, uri, data):
        (out / str(uri).replace("/", "_")).write_bytes(data)

if mode == "chained":
    def previous(signum, frame):
        (out / "previous-handler-ran").write_text("yes")
        os._exit(7)
    signal.signal(signal.SIGTERM, previous)
log = ServedLog(FolderStore(), S3Uri("lake", "m/ds/served"), "embed", "3",
                flush_every=1000, flush_seconds=3600, handle_stop=True)
request = SimpleNamespace(inputs=SimpleNamespace(stats={"text_length": 4.0}, modalities=["text"]))
for i in range(5):
    log.record(request, {"modality": "text", "embedding": [0.6, 0.8]})
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(("mode", "returncode"), [("default", -signal.SIGTERM), ("chained", 7)])
def test_sigterm_flushes_the_buffer_then_runs_the_previous_handler(
    tmp_path: Path, mode: str, returncode: int
) -> None:
    """What TorchServe's frontend does to a worker it stops: SIGTERM (atexit does not run)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == returncode
    files = [p for p in tmp_path.iterdir() if p.suffix == ".parquet"]
    assert sum(pq.read_table(p).num_rows for p in files) == 5
    assert (tmp_path / "previous-handler-ran").exists() == (mode == "chained")
