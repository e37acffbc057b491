"""The drift trigger's cooldown is atomic: monitors running at once against a real S3
server (rclone serve s3, which ignores conditional writes) start one retraining.

Airflow is replaced by a recorder of trigger calls (each takes a second, as a real
trigger over HTTP can): what is tested is the decision and object storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from monitoring.monitor import TriggerLock, monitoring_prefix

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_trigger_lock_admits_one_monitor_at_a_time(s3_settings: Settings) -> None:
    prefix = S3Uri(s3_settings.lake_bucket, f"monitoring/lock-{uuid.uuid4().hex[:8]}/lock")
    stores = [ObjectStore(s3_settings) for _ in range(4)]  # one client per monitor
    inside: list[int] = []
    most = [0]
    entries: list[int] = []
    guard = threading.Lock()

    def monitor(store: ObjectStore, who: int) -> None:
        for _ in range(3):
            with TriggerLock(store, prefix, poll_s=0.05):
                with guard:
                    inside.append(who)
                    most[0] = max(most[0], len(inside))
                time.sleep(0.1)  # the critical section: read, trigger, write
                with guard:
                    inside.remove(who)
                    entries.append(who)

    threads = [threading.Thread(target=monitor, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert sorted(entries) == sorted([0, 1, 2, 3] * 3)
    assert most[0] == 1  # never two inside at once
    assert list(stores[0].list(prefix)) == []  # every mark and ticket removed


def test_a_dead_monitors_ticket_expires(s3_settings: Settings) -> None:
    store = ObjectStore(s3_settings)
    prefix = S3Uri(s3_settings.lake_bucket, f"monitoring/lock-{uuid.uuid4().hex[:8]}/lock")
    old = int(time.time() * 1000) - 3_600_000  # an hour ago
    store.write_bytes(prefix.join(f"t-{1:012d}-{old}-deadmonitor"), b"")
    store.write_bytes(prefix.join(f"e-{old}-deadmonitor"), b"")
    with TriggerLock(store, prefix, lease_s=600, wait_s=5, poll_s=0.05):
        pass
    assert list(store.list(prefix)) == []


MONITOR = textwrap.dedent(
    """
    import json, sys, time, uuid
    from pathlib import Path

    from dualmedia.settings import Settings
    from monitoring.drift import DriftConfig
    from monitoring.monitor import decide_and_trigger

    calls, go = Path(sys.argv[1]), Path(sys.argv[3])
    dataset = sys.argv[2]

    def deliver(request):
        # Stands in for Airflow's asset-event API (an HTTP call takes time: the race window).
        (calls / request["request_id"]).write_text(json.dumps(request))
        time.sleep(1.0)
        return {"via": "recorded", "url": ""}

    summary = {"verdict": "drift", "reasons": ["text drift"], "scores": {},
               "report_uri": "s3://lake/r", "window": "batch b1"}
    settings = Settings()
    print("READY", flush=True)  # imported: the test names the start time once both are
    while not go.exists():
        time.sleep(0.01)
    start_at = float(go.read_text())
    while time.time() < start_at:  # both monitors decide at the same moment
        time.sleep(0.01)
    began = time.time()
    result = decide_and_trigger(
        settings, dataset, "s3://raw/ds", summary, DriftConfig(), True, deliver
    )
    print("RESULT " + json.dumps({**result, "began": began}), flush=True)
    """
)


def test_two_monitors_at_once_start_one_retraining(s3_settings: Settings, tmp_path: Path) -> None:
    dataset = f"cooldown-{uuid.uuid4().hex[:8]}"
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {**os.environ, **s3_settings.child_env()}
    go = tmp_path / "go"
    monitors = [
        subprocess.Popen(
            [sys.executable, "-c", MONITOR, str(calls), dataset, str(go)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for monitor in monitors:  # both have imported the monitoring code
        assert monitor.stdout is not None
        line = monitor.stdout.readline().strip()
        if line != "READY":
            _, err = monitor.communicate(timeout=60)
            raise AssertionError(f"a monitor did not start ({line!r}): {err[-2000:]}")
    start_at = time.time() + 1.0
    go.write_text(str(start_at))
    results = []
    for monitor in monitors:
        out, err = monitor.communicate(timeout=300)
        assert monitor.returncode == 0, err[-2000:]
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    # Both really decided at once (neither was still importing at the start time).
    assert all(0 <= r["began"] - start_at < 0.5 for r in results), results
    triggered = [r for r in results if r["triggered"]]
    assert len(list(calls.iterdir())) == 1, results  # one retraining
    assert len(triggered) == 1
    other = next(r for r in results if not r["triggered"])
    assert other["why"].startswith(f"cooldown: retraining {triggered[0]['request_id']} was")
    store = ObjectStore(s3_settings)
    base = monitoring_prefix(s3_settings, dataset)
    last = json.loads(store.read_text(base.join("last_trigger.json")))
    assert last["request_id"] == triggered[0]["request_id"]
    request = json.loads((calls / triggered[0]["request_id"]).read_text())
    assert request["dataset_uri"] == "s3://raw/ds" and request["reason"]["report"] == "s3://lake/r"
    assert list(store.list(base.join("trigger-lock"))) == []
