"""What the endpoints served, recorded for drift monitoring (the "current" window).

Each served item becomes one row: time, task, model version, raw-field statistics,
which modalities it had, its embeddings and (for insights) its predicted classes.
Rows are buffered in the worker and written to object storage as small Parquet
files under `s3://<lake>/monitoring/<dataset>/served/`; recording never fails or
slows a request beyond appending to a list (writes happen on a background thread).

Faults lose nothing that can be kept:

- A failed write keeps its rows in the buffer and is retried with backoff (doubling up
  to `MAX_BACKOFF_S`) at the next flush; the buffer is bounded (`max_rows`), and only
  when S3 stays down long enough to fill it are the oldest rows dropped, and counted
  (`dropped`, and the `on_drop` callback: the handler can turn it into a TorchServe
  metric).
- The buffer is flushed when the worker stops: at interpreter exit (atexit) and on
  SIGTERM (what TorchServe's frontend sends a worker it stops), through a handler that
  then hands the signal to whatever handler was installed before it.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
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
        # JSON (insights only): {"gates": modality -> weight, "disagreement": [label]}
        pa.field("signals", pa.string()),
    ]
)
# Buffered rows at most (a few tens of MB) while S3 is unreachable: the setting's default.
MAX_ROWS: int = Settings.model_fields["served_log_max_rows"].default
ROWS_PER_FILE = 2_048
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STOP_WAIT_S = 10.0  # how long a stopping worker waits for a write already under way


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
        *,
        max_rows: int = MAX_ROWS,
        on_drop: Callable[[int], None] | None = None,
        handle_stop: bool = False,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.task = task
        self.model_version = model_version
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.on_drop = on_drop
        self.rows: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        # Re-entrant: the SIGTERM handler runs on the main thread, possibly while that
        # thread is inside `record` holding the lock.
        self.lock = threading.RLock()
        self.write_lock = threading.Lock()  # one write at a time, in order
        self.flushing = threading.Event()  # set while a background flush runs
        self.retry_at = 0.0  # monotonic time before which no background retry starts
        self.backoff = FIRST_BACKOFF_S
        self.written = 0  # rows written to object storage
        self.dropped = 0  # rows lost: buffer full while storage was down, or at stop
        self.failed_writes = 0
        _LIVE.add(self)
        _install_stop_hooks(signals=handle_stop)

    @classmethod
    def from_archive(
        cls,
        model_dir: str,
        task: str,
        model_version: str,
        on_drop: Callable[[int], None] | None = None,
    ) -> ServedLog:
        """A log for this worker; a no-op when the archive or settings say no storage.

        It flushes on SIGTERM and at exit. `on_drop(n)` is told each time n rows had to be
        dropped (the handler counts them in a TorchServe metric)."""
        info_path = Path(model_dir) / ARCHIVE_INFO
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            settings = Settings()
            return cls(
                ObjectStore(settings),
                served_prefix(settings, info["dataset"]),
                task,
                model_version,
                # A buffer smaller than a flush batch flushes when full instead.
                flush_every=min(32, settings.served_log_max_rows),
                max_rows=settings.served_log_max_rows,
                on_drop=on_drop,
                handle_stop=True,
            )
        except Exception as exc:  # monitoring must never stop serving
            log.warning("served-request log disabled: %s", exc)
            return cls(None, None, task, model_version)

    def stats(self) -> dict[str, int]:
        with self.lock:
            buffered = len(self.rows)
        return {
            "buffered": buffered,
            "written": self.written,
            "dropped": self.dropped,
            "failed_writes": self.failed_writes,
        }

    def record(
        self, request: Any, result: dict[str, Any], embeddings: dict[str, Any] | None = None
    ) -> None:
        if embeddings is None and "embedding" in result:
            embeddings = {result["modality"]: result["embedding"]}
        predictions = {k: v["class"] for k, v in result.get("predictions", {}).items()}
        signals = {}
        if "gates" in result:
            conflicts = result.get("disagreement", {}).get("labels", [])
            signals = {"gates": result["gates"], "disagreement": [c["label"] for c in conflicts]}
        row = {
            "served_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "task": self.task,
            "model_version": self.model_version,
            "stats": json.dumps(request.inputs.stats),
            "modalities": [str(getattr(m, "value", m)) for m in request.inputs.modalities],
            "embeddings": json.dumps(embeddings or {}),
            "predictions": json.dumps(predictions),
            "signals": json.dumps(signals),
        }
        with self.lock:
            self.rows.append(row)
            over = self._trim()
            now = time.monotonic()
            due = (
                len(self.rows) >= self.flush_every or now - self.last_flush > self.flush_seconds
            ) and now >= self.retry_at
        self._count_dropped(over)
        if due and not self.flushing.is_set():
            # Off the request path: the answer does not wait for Parquet and S3.
            self.flushing.set()
            threading.Thread(
                target=self._flush_in_background, name="served-log-flush", daemon=True
            ).start()

    def _trim(self) -> int:
        """Drop the oldest rows over the bound (lock held); returns how many."""
        over = len(self.rows) - self.max_rows
        if over > 0:
            del self.rows[:over]
            return over
        return 0

    def _count_dropped(self, n: int) -> None:
        if n <= 0:
            return
        self.dropped += n
        log.warning("served-request log dropped %d rows (%d in all)", n, self.dropped)
        if self.on_drop is not None:
            try:
                self.on_drop(n)
            except Exception as exc:  # a metrics problem must not break serving
                log.warning("could not report dropped served rows: %s", exc)

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        finally:
            self.flushing.clear()

    def flush(self, final: bool = False) -> bool:
        """Write every buffered row; True when the buffer is empty afterwards.

        Rows of a failed write go back to the front of the buffer (kept for the next
        flush, after a backoff). With `final` (the worker is stopping) rows that cannot
        be written are counted as dropped instead."""
        # One write at a time, in order; a stopping worker waits for a write under way
        # only so long (then writes the rest beside it).
        locked = self.write_lock.acquire(timeout=STOP_WAIT_S if final else -1)
        try:
            while True:
                with self.lock:
                    rows = self.rows[:ROWS_PER_FILE]
                    del self.rows[:ROWS_PER_FILE]
                    self.last_flush = time.monotonic()
                if not rows:
                    return True
                if self.store is None or self.prefix is None:
                    continue  # no storage configured: nothing to keep them for
                if not self._write(rows):
                    if final:  # stopping: no second wait on a storage that is down
                        with self.lock:
                            rest, self.rows = self.rows, []
                        self._count_dropped(len(rows) + len(rest))
                        return False
                    with self.lock:
                        self.rows[:0] = rows
                        over = self._trim()
                        self.retry_at = time.monotonic() + self.backoff
                        self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
                    self._count_dropped(over)
                    return False
                with self.lock:
                    self.retry_at = 0.0
                    self.backoff = FIRST_BACKOFF_S
        finally:
            if locked:
                self.write_lock.release()

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        assert self.store is not None and self.prefix is not None
        day = rows[0]["served_at"][:10]
        name = f"{rows[0]['served_at'][:19].replace(':', '')}-{uuid.uuid4().hex[:8]}.parquet"
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SERVED_SCHEMA), buffer)
        try:
            self.store.write_bytes(self.prefix.join(day, name), buffer.getvalue())
        except Exception as exc:  # never fail a request over monitoring
            self.failed_writes += 1
            log.warning("could not write %d served records (kept for a retry): %s", len(rows), exc)
            return False
        self.written += len(rows)
        return True

    def close(self) -> None:
        """Flush what is buffered, once more trying rows a failed write kept (worker stop)."""
        self.flush(final=True)


# ---- flushing when the worker stops -------------------------------------------------------
_LIVE: weakref.WeakSet[ServedLog] = weakref.WeakSet()
_hooks = {"atexit": False, "signal": False}
_hooks_lock = threading.Lock()


def flush_all() -> None:
    """Flush every live log of this process (what exit and SIGTERM run)."""
    for served in list(_LIVE):
        try:
            served.close()
        except Exception as exc:
            log.warning("could not flush the served-request log at stop: %s", exc)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    flush_all()
    previous = _previous_handler
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # the default action: end the process, as without us (atexit ran above)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_previous_handler: Any = None


def _install_stop_hooks(signals: bool) -> None:
    global _previous_handler
    with _hooks_lock:
        if not _hooks["atexit"]:
            atexit.register(flush_all)
            _hooks["atexit"] = True
        if signals and not _hooks["signal"]:
            try:
                previous = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, _on_sigterm)
            except ValueError:  # not the main thread: atexit still flushes
                log.warning("served-request log: SIGTERM flush not installed (not main thread)")
                return
            _previous_handler = previous
            _hooks["signal"] = True
