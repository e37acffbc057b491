"""Helpers shared by the DAG files (no DAG here). Cheap to import: no heavy libraries.

Deterministic failures (a broken data contract, data refused by validation) must not
be retried: `no_retry_on` turns them into AirflowFailException, which Airflow fails
at once; I/O errors keep their retries with exponential backoff.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from airflow.sdk import Asset, Param, task
from airflow.sdk.exceptions import AirflowFailException

from dualmedia import assets
from dualmedia.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])

# The assets that start training (dualmedia/assets.py): new labelled feedback in a raw
# dataset (emitted by feedback_batches), and retraining asked for by the drift monitor.
FEEDBACK = Asset(name=assets.FEEDBACK, uri=assets.feedback_uri(get_settings()))
RETRAIN = Asset(name=assets.RETRAIN, uri=assets.retrain_uri(get_settings()))


def run_parameters(params: dict[str, Any], triggering_asset_events: Any) -> dict[str, Any]:
    """A training run's parameters: its own (the trigger form, or the defaults of an
    asset-triggered run), overridden by the newest triggering event's `assets.RUN_KEYS`.

    Airflow folds the events queued while a run was going into the next run; the newest
    event names the dataset (one run trains one dataset)."""
    events = [e for group in (triggering_asset_events or {}).values() for e in group]
    run = dict(params)
    for event in sorted(events, key=lambda e: e.timestamp)[-1:]:
        extra = event.extra or {}
        run.update({k: extra[k] for k in assets.RUN_KEYS if extra.get(k) is not None})
    return run


# For tasks that talk to object storage, MLflow or TorchServe.
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}

# Training steps run on the `train` queue (a GPU worker pool in production) and retry once:
# a retry resumes from the last checkpoint.
TRAIN_STEP: dict[str, Any] = {
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
    "queue": get_settings().airflow_train_queue,
}


def deterministic_errors() -> tuple[type[BaseException], ...]:
    """Errors that a retry cannot fix (imported lazily: stage modules are heavy)."""
    from dualmedia.contract import ContractError
    from ingestion.runs import IngestError
    from training.registry import RegistryError

    return (ContractError, IngestError, RegistryError, ValueError)


def no_retry_on_bad_data(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except deterministic_errors() as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


# The training DAG's run form (Airflow UI "Trigger" and the REST API's `conf`).
TRAINING_PARAMS: dict[str, Any] = {
    "dataset_uri": Param(
        assets.feedback_uri(get_settings()),
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
        description="Set by the drift monitor's event: scores and the report behind it.",
    ),
}


def champion_step(task_id: str, function: str) -> Any:
    """A task calling `function(registered model, champion version, settings)` with the
    gate's decision (the training DAG's steps after the gate)."""

    @task(task_id=task_id, **IO_RETRIES)
    @no_retry_on_bad_data
    def step(decision: dict[str, Any]) -> dict[str, Any]:
        module, name = function.rsplit(".", 1)
        call = getattr(importlib.import_module(module), name)
        return call(decision["registered_model"], decision["champion"], get_settings())

    return step
