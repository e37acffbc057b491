"""Feedback loop: a new labelled batch uploaded to the raw dataset is searchable within
minutes, and starts training.

Every 10 minutes (or on demand) this looks for batches the latest snapshot does not
hold yet; when it finds one it emits the `dualmedia-feedback` asset, which the
training DAG is scheduled on, and publishes each new batch, scored by the champion
(the serving version), to Feast and to its search catalogue (`dualmedia publish
--batch`), so serving workers search it without waiting for the retrained model.
Nothing new: the tasks are skipped and no asset is emitted. No champion yet: the
publish is skipped (nothing serves search).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Metadata, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from dag_support import FEEDBACK, IO_RETRIES

from dualmedia.settings import get_settings


@dag(
    dag_id="feedback_batches",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dualmedia", "feedback"],
    doc_md=__doc__,
    params={
        "dataset_uri": Param(FEEDBACK.uri, type="string", pattern="^s3://[^/]+/.+"),
    },
)
def feedback_batches() -> Any:
    @task(outlets=[FEEDBACK], **IO_RETRIES)
    def find_new_batches(params: dict[str, Any] | None = None) -> Any:
        from dualmedia.contract import ContractError
        from ingestion.pipeline import plan_ingest

        assert params is not None
        try:
            plan = plan_ingest(params["dataset_uri"], get_settings())
        except ContractError as exc:  # no dataset there yet: nothing to learn from
            raise AirflowSkipException(str(exc)) from None
        if plan["up_to_date"] or not plan["new_batches"]:
            raise AirflowSkipException("no new batch since the latest snapshot")
        yield Metadata(
            FEEDBACK,
            extra={"dataset_uri": params["dataset_uri"], "new_batches": plan["new_batches"]},
        )
        return plan["new_batches"]

    @task(**IO_RETRIES)
    def publish_to_search(new_batches: list[str], params: dict[str, Any] | None = None) -> Any:
        from feature_repo.publish import publish_batches
        from training.registry import champion_version

        assert params is not None
        settings = get_settings()
        name, uri = settings.model_name, params["dataset_uri"]
        version = champion_version(name, settings)
        if version is None:
            raise AirflowSkipException(f"no champion of {name}: nothing to score with")
        return publish_batches(name, version, settings, new_batches, uri)

    publish_to_search(find_new_batches())


feedback_batches()
