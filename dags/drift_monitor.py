"""Drift monitor: judge what the endpoints served against the champion's training data
and trigger retraining on drift. Runs hourly and on demand (a raw `batch` can be given
to judge a newly uploaded batch instead of served traffic).

Wiring only: monitoring.monitor.run_monitor does the work; its summary (verdict,
scores, report link, triggered run) is the task's XCom.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from dag_support import IO_RETRIES

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
        "trigger": Param(True, type="boolean", title="Start retraining on drift"),
    },
)
def drift_monitor() -> None:
    @task(**IO_RETRIES)
    def judge_drift(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evidently reports per modality, label and raw field; retrain decision."""
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
        )
        print(f"verdict: {summary['verdict']}; report: {summary['report_uri']}")
        keys = ("verdict", "reasons", "skipped", "report_uri", "trigger", "scores")
        return {k: summary[k] for k in keys}

    judge_drift()


drift_monitor()
