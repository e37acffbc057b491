"""Training pipeline: pull → validate each new batch (one mapped task per batch, on any
worker) → validate (all batches together) → snapshot → train alignment → train fusion (and
its one evaluation) → register → gate → publish features → build archive → deploy → smoke.
Started by hand or by an asset event (new feedback, drift) that names the dataset.

Wiring only: tasks call plain functions of the stage packages and pass URIs and small
summaries through XCom. Bad data fails at once; I/O steps retry with backoff.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetAlias, chain, dag, task
from dag_support import (
    FEEDBACK,
    IO_RETRIES,
    RETRAIN,
    TRAIN_STEP,
    TRAINING_PARAMS,
    champion_step,
    no_retry_on_bad_data,
    run_parameters,
)

from dualmedia.settings import get_settings

SNAPSHOTS = AssetAlias("dualmedia-snapshots")
MODEL_VERSIONS = AssetAlias("dualmedia-model-versions")
# After the gate, in order: steps taking (registered model, champion version, settings).
CHAMPION_STEPS = (
    ("publish_features", "feature_repo.publish.publish"),  # vectors + predictions to Feast
    ("build_archive", "serving.release.build_release"),  # names the search catalogue publish built
    ("deploy", "serving.release.deploy_release"),  # register, smoke-test, make default
)


@dag(
    dag_id="multimodal_training",
    schedule=(FEEDBACK | RETRAIN),  # new feedback, drift (dualmedia/assets.py); or by hand
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
    def pull(params: dict | None = None, triggering_asset_events: Any = None) -> dict[str, Any]:
        """The run's parameters (the form's; an event's dataset); what is new; the snapshot."""
        from ingestion.pipeline import plan_ingest

        run = run_parameters(params or {}, triggering_asset_events)
        return {**plan_ingest(run["dataset_uri"], get_settings()), "run": run}

    @task
    def new_batches(plan: dict[str, Any]) -> list[str]:
        """What validate_batch is mapped over: the batches no snapshot holds yet."""
        return [] if plan["up_to_date"] else plan["new_batches"]

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def validate_batch(plan: dict[str, Any], batch: str) -> dict[str, Any]:
        """One new batch (a mapped task each): record checks, quarantine, its GX suite."""
        from ingestion.validation import validate_batch as check_batch

        return check_batch(plan["plan_uri"], batch, get_settings())

    @task(trigger_rule="none_failed", **IO_RETRIES)  # no new batch: nothing was mapped
    @no_retry_on_bad_data
    def validate(plan: dict[str, Any]) -> dict[str, Any]:
        """All batches together: duplicates across them, reject rates, Data Docs."""
        from ingestion.validation import finish_validation

        summary = finish_validation(plan["plan_uri"], get_settings())
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

    @task(**TRAIN_STEP)
    @no_retry_on_bad_data
    def train_alignment(snap: dict[str, Any], plan: dict[str, Any]) -> dict:
        """Contrastive alignment of the modality encoders (checkpointed in S3)."""
        from training.train import train_from_params

        result = train_from_params(snap["snapshot_uri"], plan["run"], get_settings(),
                                   stop_after="alignment")  # fmt: skip
        return {k: result[k] for k in ("run_name", "parent_run_id", "checkpoint_uri")}

    @task(**TRAIN_STEP)
    @no_retry_on_bad_data
    def train_fusion(snap: dict[str, Any], plan: dict[str, Any]) -> dict:
        """The fusion model, evaluated on the test split once (the gate reads that)."""
        from training.train import train_from_params

        result = train_from_params(snap["snapshot_uri"], plan["run"], get_settings())
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
    def gate(registered: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        """Challenger vs champion on the same snapshot; only a better model is promoted."""
        from training import registry

        name, margin = registered["registered_model"], plan["run"]["promotion_margin"]
        return registry.gate(name, get_settings(), registry.GateConfig(margin=margin))

    @task(**IO_RETRIES)
    def smoke_test(decision: dict[str, Any]) -> dict[str, str]:
        """Every endpoint answers with the champion's version."""
        from serving.deploy import verify

        return verify(str(decision["champion"]), get_settings())

    snap = snapshot(plan := pull())
    batches = validate_batch.partial(plan=plan).expand(batch=new_batches(plan))
    batches >> validate(plan) >> snap
    trained = train_fusion(snap, plan)
    train_alignment(snap, plan) >> trained
    decision = gate(register(trained, snap), plan)
    chain(*(champion_step(t, f)(decision) for t, f in CHAMPION_STEPS), smoke_test(decision))


multimodal_training()
