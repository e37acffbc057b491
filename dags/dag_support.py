"""Helpers shared by the DAG files (no DAG here). Cheap to import: no heavy libraries.

Deterministic failures (a broken data contract, data refused by validation) must not
be retried: `no_retry_on` turns them into AirflowFailException, which Airflow fails
at once; I/O errors keep their retries with exponential backoff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from airflow.sdk import Asset, Param
from airflow.sdk.exceptions import AirflowFailException

from dualmedia.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])

# New labelled feedback in the raw dataset (emitted by feedback_batches, starts training).
FEEDBACK = Asset(
    name="dualmedia-feedback",
    uri=f"s3://{get_settings().raw_bucket}/customer-feedback",
)

# For tasks that talk to object storage, MLflow or TorchServe.
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}


def deterministic_errors() -> tuple[type[BaseException], ...]:
    """Errors that a retry cannot fix (imported lazily: stage modules are heavy)."""
    from dualmedia.contract import ContractError
    from ingestion.pipeline import IngestError
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
}
