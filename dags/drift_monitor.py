"""Drift monitor: judge what the endpoints served against the champion's training data
and ask for retraining on drift. Runs hourly and on demand (a raw `batch` can be given
to judge a newly uploaded batch instead of served traffic).

Wiring only: monitoring.monitor.run_monitor does the work; its summary (verdict, scores,
report link, retraining request) is `judge_drift`'s XCom. On drift, `request_retraining`
emits the `dualmedia-retrain` asset event that the training DAG is scheduled on (its extra
names the dataset and says why); otherwise it is skipped and emits nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Metadata, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from dag_support import IO_RETRIES, RETRAIN

from dualmedia.settings import get_settings


@dag(
    dag_id="drift_monitor",
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dualmedia", "monitoring"],
    doc_md=__doc__,
    params={
        "model": Param(get_settings().model_name, type="string", title="Registered model to watch"),
        "batch": Param(
            None,
            type=["null", "string"],
            title="Raw batch",
            description="Judge this batch of the dataset instead of served traffic.",
        ),
        "since_hours": Param(
            24, type="integer", minimum=1, title="Served traffic of the last N hours"
        ),
        "trigger": Param(True, type="boolean", title="Ask for retraining on drift"),
    },
)
def drift_monitor() -> None:
    @task(**IO_RETRIES)
    def judge_drift(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evidently reports per modality, label and raw field; the retraining decision."""
        from datetime import UTC

        from monitoring.monitor import run_monitor
        from training.registry import champion_version

        assert params is not None
        if champion_version(params["model"], get_settings()) is None:
            raise AirflowSkipException(f"{params['model']} has no champion yet: nothing to watch")
        since = datetime.now(UTC) - timedelta(hours=params["since_hours"])
        summary = run_monitor(
            get_settings(),
            params["model"],
            batch=params["batch"],
            since=None if params["batch"] else since,
            trigger=params["trigger"],
            deliver=lambda request: {"via": "asset event (request_retraining)", "url": ""},
        )
        print(f"verdict: {summary['verdict']}; report: {summary['report_uri']}")
        keys = ("verdict", "reasons", "skipped", "report_uri", "trigger", "scores")
        return {k: summary[k] for k in keys}

    @task(outlets=[RETRAIN], **IO_RETRIES)
    def request_retraining(judged: dict[str, Any]) -> Any:
        """Emit the retraining event the verdict asked for (skipped: no event)."""
        trigger = judged["trigger"]
        if not trigger.get("triggered"):
            raise AirflowSkipException(f"no retraining: {trigger['why']}")
        yield Metadata(RETRAIN, extra=trigger["request"])
        return trigger["request_id"]

    request_retraining(judge_drift())


drift_monitor()
