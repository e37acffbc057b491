"""The monitoring step: judge the current window against the champion's training data,
keep the report, and trigger retraining when drift is found.

Reports live in object storage, one folder per run, with an index page listing them
by time and verdict (`s3://<lake>/monitoring/<dataset>/index.html`, also rendered to
`<home>/monitoring/<dataset>/index.html`), are attached to the champion's MLflow run,
and are added to an Evidently workspace (`evidently ui --workspace <home>/evidently`).
A drift verdict asks for retraining with an event of the `dualmedia-retrain` Airflow
asset (dualmedia/assets.py), whose extra names the dataset and says why; the training DAG
is scheduled on that asset. In Airflow the drift monitor DAG's `request_retraining` task
emits the event; `dualmedia monitor` posts it through the REST API. A cooldown keeps one
drift from starting a storm of runs.

The cooldown is atomic: the check-trigger-record sequence runs under `TriggerLock`, a
mutual exclusion among monitors built on plain object storage (PUT, LIST, DELETE; no
conditional writes, which `rclone serve s3` ignores), so two monitors judging the same
drift at once start one retraining.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from monitoring.drift import DriftConfig
from monitoring.report import Verdict, judge

TRAINING_DAG = "multimodal_training"
STAMP = "%Y%m%dT%H%M%S%fZ"  # a report's time, its folder's name
log = logging.getLogger(__name__)
# How a retraining request (the asset event's extra) reaches Airflow; returns what to
# report about it (e.g. {"via": ..., "url": ...}).
Deliver = Callable[[dict[str, Any]], dict[str, Any]]


def monitoring_prefix(settings: Settings, dataset: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"monitoring/{dataset}")


def run_monitor(
    settings: Settings,
    model_name: str,
    *,
    batch: str | None = None,
    dataset_uri: str | None = None,
    since: datetime | None = None,
    config: DriftConfig | None = None,
    trigger: bool = True,
    deliver: Deliver | None = None,
) -> dict[str, Any]:
    """Judge a window (a raw `batch` of `dataset_uri`, or what was served since `since`).

    On drift (and `trigger`), a retraining request goes to `deliver`; by default it is
    posted as an asset event through Airflow's REST API."""
    from dualmedia.snapshot import Snapshot
    from monitoring.window import batch_window, reference_window, served_window
    from training.models.scoring import unimodal_reliability
    from training.registry import TAG_SNAPSHOT_URI, champion_version, load_registered_model

    config = config or DriftConfig()
    version = champion_version(model_name, settings)
    if version is None:
        raise RuntimeError(f"{model_name}: no champion model to monitor yet")
    model, tags = load_registered_model(model_name, version, settings)
    store = ObjectStore(settings)
    snapshot = Snapshot(store, tags[TAG_SNAPSHOT_URI])
    dataset = snapshot.spec.name
    # Which modality's vote counts in a disagreement: as the served archive decides it.
    reliability = unimodal_reliability(model, snapshot.validation_arrays())
    reference = reference_window(model, snapshot, version, reliability)
    if batch is not None:
        current = batch_window(
            model, dataset_uri or snapshot.info.source_uri, batch, settings, version, reliability
        )
        window_name = f"batch {batch}"
    else:
        current = served_window(settings, dataset, since=since)
        window_name = f"served since {since.isoformat() if since else 'the start'}"
    verdict = judge(reference, current, config)
    summary = publish_report(settings, dataset, model_name, version, window_name, verdict, config)
    report_prefix = monitoring_prefix(settings, dataset).join("reports", summary["time"])
    _attach_to_mlflow(settings, tags, report_prefix, summary)
    summary["trigger"] = decide_and_trigger(
        settings, dataset, snapshot.info.source_uri, summary, config, trigger, deliver
    )
    store.write_json(report_prefix.join("summary.json"), summary)
    return summary


def publish_report(
    settings: Settings,
    dataset: str,
    model_name: str,
    version: str,
    window_name: str,
    verdict: Verdict,
    config: DriftConfig,
    stamp: str | None = None,
) -> dict[str, Any]:
    """Keep a verdict's report in object storage, refresh the dataset's drift index and
    add the report to the Evidently workspace; returns the summary."""
    store = ObjectStore(settings)
    stamp = stamp or datetime.now(UTC).strftime(STAMP)
    report_prefix = monitoring_prefix(settings, dataset).join("reports", stamp)
    summary: dict[str, Any] = {
        "time": stamp,
        "dataset": dataset,
        "model": model_name,
        "model_version": version,
        "window": window_name,
        "verdict": "drift" if verdict.drifted else "no drift",
        "reasons": verdict.reasons,
        "skipped": verdict.skipped,
        "scores": verdict.scores(),
        "report_uri": str(report_prefix.join("report.html")),
        "n_reference": verdict.n_reference,
        "n_current": verdict.n_current,
    }
    _save_report(store, config, verdict, report_prefix, summary)
    summary["index"] = update_index(settings, dataset)
    summary["workspace"] = _add_to_workspace(settings, dataset, report_prefix, store)
    return summary


def _save_report(
    store: ObjectStore,
    config: DriftConfig,
    verdict: Verdict,
    prefix: S3Uri,
    summary: dict[str, Any],
) -> None:
    from monitoring.report_page import write_report

    context = {
        "dataset": summary["dataset"],
        "window": summary["window"],
        "model": f"{summary['model']} v{summary['model_version']}",
        "time (UTC)": summary["time"],
    }
    with tempfile.TemporaryDirectory(prefix="dualmedia-drift-") as tmp:
        folder = Path(tmp)
        stamp = datetime.strptime(summary["time"], STAMP).replace(tzinfo=UTC)
        write_report(verdict, config, context, folder, stamp)
        (folder / "verdict.json").write_text(json.dumps({**summary, **verdict.to_dict()}, indent=2))
        store.upload_dir(folder, prefix, skip_unchanged=False)


def _attach_to_mlflow(
    settings: Settings, tags: dict[str, str], prefix: S3Uri, summary: dict[str, Any]
) -> None:
    """The report and verdict become artifacts of the model's training run."""
    from mlflow import MlflowClient

    from training.registry import TAG_RUN

    run_id = tags.get(TAG_RUN)
    if not run_id:
        return
    store = ObjectStore(settings)
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    with tempfile.TemporaryDirectory(prefix="dualmedia-drift-mlflow-") as tmp:
        for name in ("report.html", "verdict.json"):
            if store.exists(prefix.join(name)):
                store.download_file(prefix.join(name), Path(tmp) / name)
        client.log_artifacts(run_id, tmp, artifact_path=f"drift/{summary['time']}")
    client.set_tag(run_id, "dualmedia.last_drift_verdict", summary["verdict"])


def update_index(settings: Settings, dataset: str) -> dict[str, str]:
    """Regenerate the index page of every report of a dataset (monitoring/index_page.py)."""
    from monitoring.index_page import index_page

    store = ObjectStore(settings)
    base = monitoring_prefix(settings, dataset)
    entries = []
    for stamp in store.list_prefixes(base.join("reports")):
        summary_uri = base.join("reports", stamp, "verdict.json")
        if store.exists(summary_uri):
            entries.append(json.loads(store.read_text(summary_uri)))
    local_root = settings.home_dir / "monitoring" / dataset
    for e in entries:
        local_report = local_root / "reports" / e["time"] / "report.html"
        if not local_report.exists():
            store.download_file(base.join("reports", e["time"], "report.html"), local_report)
    page = index_page(dataset, entries)
    local_root.mkdir(parents=True, exist_ok=True)
    (local_root / "index.html").write_text(page, encoding="utf-8")
    store.write_bytes(base.join("index.html"), page.encode(), "text/html")
    return {"uri": str(base.join("index.html")), "local": str(local_root / "index.html")}


def _add_to_workspace(
    settings: Settings, dataset: str, prefix: S3Uri, store: ObjectStore
) -> str | None:
    """Add the report to the local Evidently workspace (browsable with `evidently ui`)."""
    uri = prefix.join("evidently_snapshot.json")
    if not store.exists(uri):
        return None
    from evidently.core.report import Snapshot as EvidentlySnapshot
    from evidently.ui.workspace import Workspace

    from monitoring.evidently_metrics import add_trend_panels

    folder = settings.home_dir / "evidently"
    workspace = Workspace.create(str(folder))
    found = workspace.search_project(dataset)
    project = found[0] if found else workspace.create_project(dataset, description="drift reports")
    snapshot = EvidentlySnapshot.loads(store.read_text(uri))
    workspace.add_run(project.id, snapshot, include_data=False)
    add_trend_panels(project, snapshot)
    return str(folder)


def decide_and_trigger(
    settings: Settings,
    dataset: str,
    dataset_uri: str,
    summary: dict[str, Any],
    config: DriftConfig,
    trigger: bool,
    deliver: Deliver | None = None,
) -> dict[str, Any]:
    """Drift → a retraining request (unless one was made within the cooldown).

    Monitors running at once take turns (TriggerLock): the one that goes first requests
    and records it, the others then find the record and report the cooldown."""
    if summary["verdict"] != "drift":
        return {"triggered": False, "why": "no drift"}
    store = ObjectStore(settings)
    base = monitoring_prefix(settings, dataset)
    try:
        with TriggerLock(store, base.join("trigger-lock")):
            return _trigger_unless_cooling_down(
                settings, store, base, dataset_uri, summary, config, trigger, deliver
            )
    except TriggerLockBusy as exc:
        return {"triggered": False, "why": str(exc)}


def _last_trigger(store: ObjectStore, state_uri: S3Uri) -> tuple[datetime, str] | None:
    """The recorded last request (time, request id), validated as data; None if absent."""
    if not store.exists(state_uri):
        return None
    try:
        last = json.loads(store.read_text(state_uri))
        at = datetime.fromisoformat(last["at"])
        request_id = last["request_id"]
        if at.tzinfo is None or not isinstance(request_id, str):
            raise ValueError("needs a timezone-aware 'at' and a string 'request_id'")
        return at, request_id
    except (ValueError, TypeError, KeyError) as exc:
        # A damaged record must neither block retraining for good nor crash the monitor.
        log.warning("%s: ignoring an unreadable trigger record: %s", state_uri, exc)
        return None


def retrain_request(
    settings: Settings, dataset_uri: str, summary: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The retraining asset event's extra: what to train on (assets.RUN_KEYS) and why."""
    return {
        "request_id": f"drift-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}",
        "dataset_uri": dataset_uri,
        "train_config": settings.train_config,
        "reason": {
            "drift": summary["reasons"],
            "scores": summary["scores"],
            "report": summary["report_uri"],
            "window": summary["window"],
        },
    }


def post_retrain_event(settings: Settings) -> Deliver:
    """Deliver a request as a `dualmedia-retrain` asset event through the REST API."""

    def deliver(request: dict[str, Any]) -> dict[str, Any]:
        from dualmedia import assets
        from dualmedia.airflow_api import AirflowClient

        client = AirflowClient(settings)
        event = client.create_asset_event(assets.RETRAIN, request)
        return {"via": "asset event (REST API)", "event_id": event["id"],
                "url": client.asset_url(event["asset_id"])}  # fmt: skip

    return deliver


def _trigger_unless_cooling_down(
    settings: Settings,
    store: ObjectStore,
    base: S3Uri,
    dataset_uri: str,
    summary: dict[str, Any],
    config: DriftConfig,
    trigger: bool,
    deliver: Deliver | None,
) -> dict[str, Any]:
    """The check-request-record sequence; run only while holding the TriggerLock."""
    state_uri = base.join("last_trigger.json")
    now = datetime.now(UTC)
    last = _last_trigger(store, state_uri)
    if last is not None:
        since = now - last[0]
        if since < timedelta(minutes=config.cooldown_minutes):
            minutes = int(since.total_seconds() // 60)
            why = f"cooldown: retraining {last[1]} was requested {minutes} min ago"
            return {"triggered": False, "why": why}
    if not trigger:
        return {"triggered": False, "why": "triggering disabled"}
    request = retrain_request(settings, dataset_uri, summary, now)
    delivered = (deliver or post_retrain_event(settings))(request)
    store.write_json(state_uri, {"at": now.isoformat(), "request_id": request["request_id"]})
    return {
        "triggered": True,
        "dag_id": TRAINING_DAG,
        "request_id": request["request_id"],
        "request": request,
        **delivered,
    }


# ---- the trigger lock ------------------------------------------------------------------
class TriggerLockBusy(RuntimeError):
    """Another monitor held the trigger lock for longer than a monitor waits."""


class TriggerLock:
    """Mutual exclusion among monitors over object storage: Lamport's bakery algorithm.

    Works with any S3 that has read-after-write consistency for PUT/LIST/DELETE (AWS S3,
    MinIO, `rclone serve s3`); it needs no conditional write (rclone ignores
    If-None-Match/If-Match). Under `prefix`:

        e-<ms>-<id>           "entering": taking a ticket right now
        t-<n>-<ms>-<id>       a ticket: turn n (ties broken by id)

    A monitor writes its entering mark, takes ticket 1 + the highest it lists, removes the
    mark, then waits until no one is entering and no ticket is ahead of its own. At any
    moment a monitor between its first write and its release shows a mark or a ticket,
    so one that lists neither has not begun and will take a higher ticket: two monitors
    never hold the lock at once. Marks and tickets older than `lease_s` (a monitor that
    died holding them) are ignored and removed.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: S3Uri,
        lease_s: float = 600.0,
        wait_s: float = 300.0,
        poll_s: float = 0.2,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.me = uuid.uuid4().hex
        self.ticket: S3Uri | None = None

    def _entries(self) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]]]:
        """(entering: (id, key)), (tickets: (n, id, key)); expired ones removed."""
        entering, tickets = [], []
        now_ms = time.time() * 1000
        for obj in self.store.list(self.prefix):
            name = obj.key.rsplit("/", 1)[-1]
            kind, _, rest = name.partition("-")
            parts = rest.split("-")
            try:
                if kind == "e" and len(parts) == 2:
                    stamp, who, n = int(parts[0]), parts[1], 0
                elif kind == "t" and len(parts) == 3:
                    n, stamp, who = int(parts[0]), int(parts[1]), parts[2]
                else:
                    continue
            except ValueError:
                continue
            if now_ms - stamp > self.lease_s * 1000 and who != self.me:
                log.warning("trigger lock: removing %s, older than its lease", obj.key)
                self.store.delete(S3Uri(self.prefix.bucket, obj.key))
                continue
            if kind == "e":
                entering.append((who, obj.key))
            else:
                tickets.append((n, who, obj.key))
        return entering, tickets

    def acquire(self) -> None:
        stamp = int(time.time() * 1000)
        mark = self.prefix.join(f"e-{stamp}-{self.me}")
        self.store.write_bytes(mark, b"")
        try:
            _, tickets = self._entries()
            number = 1 + max((n for n, _, _ in tickets), default=0)
            self.ticket = self.prefix.join(f"t-{number:012d}-{stamp}-{self.me}")
            self.store.write_bytes(self.ticket, b"")
        finally:
            self.store.delete(mark)
        deadline = time.monotonic() + self.wait_s
        while True:
            entering, tickets = self._entries()
            busy = any(who != self.me for who, _ in entering) or any(
                (n, who) < (number, self.me) for n, who, _ in tickets
            )
            if not busy:
                return
            if time.monotonic() > deadline:
                self.release()
                raise TriggerLockBusy(
                    f"another monitor held the trigger lock ({self.prefix}) for over "
                    f"{self.wait_s:.0f}s; not triggering (it decides on this drift)"
                )
            time.sleep(self.poll_s)

    def release(self) -> None:
        if self.ticket is not None:
            self.store.delete(self.ticket)
            self.ticket = None

    def __enter__(self) -> TriggerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
