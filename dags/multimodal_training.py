"""Training pipeline: ingest → validate → snapshot → train alignment → train fusion →
evaluate → register → gate → publish features → build archive → deploy → smoke test.

Wiring only: each task calls a plain function of a stage package and passes URIs and
small summaries through XCom. Heavy imports happen inside the tasks, so parsing this
file stays cheap. Deterministic failures (a broken data contract, data refused by
validation) fail at once; I/O steps retry with exponential backoff; training retries
resume from the last checkpoint.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, Param, dag, task
from dag_support import FEEDBACK, IO_RETRIES, no_retry_on_bad_data

from dualmedia.settings import get_settings

SNAPSHOTS = AssetAlias("dualmedia-snapshots")
MODEL_VERSIONS = AssetAlias("dualmedia-model-versions")
TRAIN_RETRIES: dict[str, Any] = {"retries": 1, "retry_delay": timedelta(seconds=30)}


@dag(
    dag_id="multimodal_training",
    schedule=[FEEDBACK],  # a new labelled batch (dags/feedback_batches.py); or by hand
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dualmedia", "training"],
    doc_md=__doc__,
    params={
        "dataset_uri": Param(
            f"s3://{get_settings().raw_bucket}/customer-feedback",
            type="string",
            pattern="^s3://[^/]+/.+",
            title="Dataset",
            description="Dataset prefix in object storage (dataset.yaml + batch folders).",
        ),
        "train_config": Param(
            get_settings().train_config,
            type="string",
            title="Training configuration",
            description="A file of configs/train/ (without .yaml), e.g. default or tiny.",
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=500,
            title="Epochs",
            description="Epochs of each stage (alignment, fusion); empty = the configuration's.",
        ),
        "batch_size": Param(
            None,
            type=["null", "integer"],
            minimum=2,
            maximum=4096,
            title="Batch size",
            description="Training batch size; empty = the configuration's.",
        ),
        "fusion_type": Param(
            None,
            type=["null", "string"],
            enum=[None, "gated", "early", "late", "hybrid"],
            title="Fusion",
            description="Fusion model: gated (attention + gates), early, late or hybrid.",
        ),
        "promotion_margin": Param(
            0.0,
            type="number",
            minimum=0,
            maximum=1,
            title="Promotion margin",
            description="How much the mean fusion macro-F1 must beat the champion's by.",
        ),
        "reason": Param(
            {},
            type="object",
            title="Why this run",
            description="Set by the drift monitor: scores and the report that triggered it.",
        ),
    },
)
def multimodal_training() -> None:
    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def pull(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Read the dataset spec and batch listing; decide what is new; name the snapshot."""
        from ingestion.pipeline import plan_ingest

        assert params is not None
        return plan_ingest(params["dataset_uri"], get_settings())

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
    def snapshot(
        plan: dict[str, Any], validated: dict[str, Any], *, outlet_events: Any = None
    ) -> dict[str, Any]:
        """Publish the snapshot atomically; emit it as an asset."""
        from ingestion.pipeline import publish_snapshot

        summary = publish_snapshot(plan["plan_uri"], get_settings())
        outlet_events[SNAPSHOTS].add(
            Asset(
                name=f"snapshot-{summary['dataset']}-{summary['snapshot_id']}",
                uri=summary["snapshot_uri"],
            ),
            extra={"accepted": summary["accepted"], "quarantined": summary["quarantined"]},
        )
        return {k: summary[k] for k in ("snapshot_uri", "snapshot_id", "dataset", "accepted")}

    def _train_config(params: dict[str, Any]) -> Any:
        from training.config import REPO_CONFIGS, load_train_config

        config = load_train_config(REPO_CONFIGS / f"{params['train_config']}.yaml")
        updates: dict[str, Any] = {}
        if params.get("epochs"):
            updates["alignment"] = config.alignment.model_copy(update={"epochs": params["epochs"]})
            updates["fusion"] = config.fusion.model_copy(update={"epochs": params["epochs"]})
        if params.get("batch_size"):
            updates["data"] = config.data.model_copy(update={"batch_size": params["batch_size"]})
        if params.get("fusion_type"):
            fusion = config.model.fusion.model_copy(update={"mode": params["fusion_type"]})
            updates["model"] = config.model.model_copy(update={"fusion": fusion})
        return config.model_copy(update=updates)

    @task(**TRAIN_RETRIES)
    @no_retry_on_bad_data
    def train_alignment(
        snap: dict[str, Any], params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Contrastive alignment of the modality encoders (checkpointed in S3)."""
        from training.train import train

        assert params is not None
        result = train(
            snap["snapshot_uri"], _train_config(params), get_settings(), resume=True,
            progress=False, stop_after="alignment",
        )  # fmt: skip
        return {k: result[k] for k in ("run_name", "parent_run_id", "checkpoint_uri")}

    @task(**TRAIN_RETRIES)
    @no_retry_on_bad_data
    def train_fusion(
        snap: dict[str, Any], aligned: dict[str, Any], params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The fusion model over the aligned embeddings; logs the model to MLflow."""
        from training.train import train

        assert params is not None
        result = train(
            snap["snapshot_uri"], _train_config(params), get_settings(), resume=True, progress=False
        )
        result.pop("stages", None)
        return result

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        """Retrieval, zero-shot, fusion and ablations on the snapshot's test split."""
        from training.evaluate import evaluate_model

        result = evaluate_model(trained["model_uri"], trained["snapshot_uri"], get_settings())
        metrics = result["metrics"]
        keep = ("/fusion/", "/gain/", "/retrieval/")
        return {k: round(v, 4) for k, v in metrics.items() if any(p in k for p in keep)}

    @task(outlets=[MODEL_VERSIONS], **IO_RETRIES)
    @no_retry_on_bad_data
    def register(
        trained: dict[str, Any],
        snap: dict[str, Any],
        evaluation: dict[str, Any],
        *,
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        """A new version of the registered model, alias `challenger`; emitted as an asset."""
        from training.registry import register as register_version

        registered = register_version(trained, get_settings(), name=snap["dataset"])
        outlet_events[MODEL_VERSIONS].add(
            Asset(
                name=f"model-{registered['registered_model']}-v{registered['version']}",
                uri=f"s3://{get_settings().lake_bucket}/models/"
                f"{registered['registered_model']}/v{registered['version']}",
            ),
            extra={"run_id": registered["run_id"], "snapshot_id": snap["snapshot_id"]},
        )
        return registered

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def gate(registered: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Challenger vs champion on the same snapshot; only a better model is promoted."""
        from training.registry import GateConfig
        from training.registry import gate as promotion_gate

        assert params is not None
        config = GateConfig(margin=params["promotion_margin"])
        decision = promotion_gate(registered["registered_model"], get_settings(), config)
        return {**decision, "registered_model": registered["registered_model"]}

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def publish_features(decision: dict[str, Any]) -> dict[str, Any]:
        """The champion's embeddings and predictions to Feast (offline, then online)."""
        from feature_repo.publish import publish

        return publish(decision["registered_model"], decision["champion"], get_settings())

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def build_archive(decision: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
        """The champion's TorchServe archive, with the published vectors as catalogue."""
        from serving.release import build_release

        return build_release(decision["registered_model"], decision["champion"], get_settings())

    @task(**IO_RETRIES)
    @no_retry_on_bad_data
    def deploy(decision: dict[str, Any], archive: dict[str, Any]) -> dict[str, Any]:
        """Register on TorchServe, smoke-test, then make it the default."""
        from serving.release import deploy_release

        return deploy_release(decision["registered_model"], decision["champion"], get_settings())

    @task(**IO_RETRIES)
    def smoke_test(decision: dict[str, Any], deployed: dict[str, Any]) -> dict[str, Any]:
        """Every endpoint answers with the champion's version."""
        from serving.client import TorchServeClient
        from serving.deploy import SMOKE_REQUESTS

        client = TorchServeClient(get_settings())
        versions = {}
        for endpoint, body in SMOKE_REQUESTS.items():
            response = client.predict(endpoint, body)
            response.raise_for_status()
            versions[endpoint] = response.json()["model_version"]
        if set(versions.values()) != {decision["champion"]}:
            raise RuntimeError(f"endpoints serve {versions}, expected v{decision['champion']}")
        return versions

    plan = pull()
    snap = snapshot(plan, validate(plan))
    trained = train_fusion(snap, train_alignment(snap))
    registered = register(trained, snap, evaluate(trained))
    decision = gate(registered)
    archive = build_archive(decision, publish_features(decision))
    smoke_test(decision, deploy(decision, archive))


multimodal_training()
