"""Training pipeline: ingest → validate → snapshot → train alignment → train fusion (and
its one evaluation) → register → gate → publish features → build archive → deploy → smoke.

Wiring only: each task calls a plain function of a stage package and passes URIs and small
summaries through XCom; heavy imports happen inside the tasks. Deterministic failures (a
broken contract, data refused by validation) fail at once; I/O steps retry with backoff.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, chain, dag, task
from dag_support import FEEDBACK, IO_RETRIES, TRAINING_PARAMS, no_retry_on_bad_data

from dualmedia.settings import get_settings

SNAPSHOTS = AssetAlias("dualmedia-snapshots")
MODEL_VERSIONS = AssetAlias("dualmedia-model-versions")
# After the gate, in order: steps taking (registered model, champion version, settings).
CHAMPION_STEPS = (
    ("publish_features", "feature_repo.publish.publish"),  # vectors + predictions to Feast
    ("build_archive", "serving.release.build_release"),  # catalogue = the published vectors
    ("deploy", "serving.release.deploy_release"),  # register, smoke-test, make default
)
# Training steps run on the `train` queue (a GPU worker pool in production) and retry once:
# a retry resumes from the last checkpoint.
TRAIN: dict[str, Any] = {
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
    "queue": get_settings().airflow_train_queue,
}


@dag(
    dag_id="multimodal_training",
    schedule=[FEEDBACK],  # a new labelled batch (dags/feedback_batches.py); or by hand
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dualmedia", "training"],
    doc_md=__doc__,
    params=TRAINING_PARAMS,
)
def multimodal_training() -> None:
    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def pull(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Read the dataset spec and batch listing; decide what is new; name the snapshot."""
        from ingestion.pipeline import plan_ingest

        return plan_ingest(params["dataset_uri"], get_settings())  # type: ignore[index]

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def validate(plan: dict[str, Any]) -> dict[str, Any]:
        """Per-record checks, quarantine, Great Expectations suite per new batch."""
        from ingestion.pipeline import validate_batches

        summary = validate_batches(plan["plan_uri"], get_settings())
        summary.pop("batches", None)  # keep XCom small: the full report is in S3
        return summary

    @task(outlets=[SNAPSHOTS], **IO_RETRIES)
    @no_retry_on_bad_data
    def snapshot(plan: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
        """Publish the snapshot atomically; emit it as an asset."""
        from ingestion.pipeline import publish_snapshot

        summary = publish_snapshot(plan["plan_uri"], get_settings())
        outlet_events[SNAPSHOTS].add(
            Asset(name=f"snapshot-{summary['dataset']}-{summary['snapshot_id']}",
                  uri=summary["snapshot_uri"]),
            extra={"accepted": summary["accepted"], "quarantined": summary["quarantined"]},
        )  # fmt: skip
        return {k: summary[k] for k in ("snapshot_uri", "snapshot_id", "dataset", "accepted")}

    @task(**TRAIN)
    @no_retry_on_bad_data
    def train_alignment(snap: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        """Contrastive alignment of the modality encoders (checkpointed in S3)."""
        from training.train import train_from_params

        result = train_from_params(snap["snapshot_uri"], params or {}, get_settings(),
                                   stop_after="alignment")  # fmt: skip
        return {k: result[k] for k in ("run_name", "parent_run_id", "checkpoint_uri")}

    @task(**TRAIN)
    @no_retry_on_bad_data
    def train_fusion(snap: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        """The fusion model over the aligned embeddings, evaluated on the test split once
        (the gate reads that evaluation); logs the model to MLflow."""
        from training.train import train_from_params

        result = train_from_params(snap["snapshot_uri"], params or {}, get_settings())
        result.pop("stages", None)
        return result

    @task(outlets=[MODEL_VERSIONS], **IO_RETRIES)
    @no_retry_on_bad_data
    def register(trained: dict, snap: dict, *, outlet_events: Any = None) -> dict[str, Any]:
        """A new version of the registered model, alias `challenger`; emitted as an asset."""
        from training.registry import register as register_version

        registered = register_version(trained, get_settings(), name=snap["dataset"])
        name, version = registered["registered_model"], registered["version"]
        outlet_events[MODEL_VERSIONS].add(
            Asset(name=f"model-{name}-v{version}",
                  uri=f"s3://{get_settings().lake_bucket}/models/{name}/v{version}"),
            extra={"run_id": registered["run_id"], "snapshot_id": snap["snapshot_id"]},
        )  # fmt: skip
        return registered

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def gate(registered: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Challenger vs champion on the same snapshot; only a better model is promoted."""
        from training import registry

        name, margin = registered["registered_model"], (params or {})["promotion_margin"]
        decision = registry.gate(name, get_settings(), registry.GateConfig(margin=margin))
        return {**decision, "registered_model": name}

    def champion_step(task_id: str, function: str) -> Any:
        """A task calling `function(registered model, champion version, settings)`."""

        @task(task_id=task_id, **IO_RETRIES)
        @no_retry_on_bad_data
        def step(decision: dict[str, Any]) -> dict[str, Any]:
            module, name = function.rsplit(".", 1)
            call = getattr(importlib.import_module(module), name)
            return call(decision["registered_model"], decision["champion"], get_settings())

        return step

    @task(**IO_RETRIES)
    def smoke_test(decision: dict[str, Any]) -> dict[str, str]:
        """Every endpoint answers with the champion's version."""
        from serving.deploy import verify

        return verify(str(decision["champion"]), get_settings())

    snap = snapshot(plan := pull())
    validate(plan) >> snap
    trained = train_fusion(snap)
    train_alignment(snap) >> trained
    decision = gate(register(trained, snap))
    chain(*(champion_step(t, f)(decision) for t, f in CHAMPION_STEPS), smoke_test(decision))


multimodal_training()
