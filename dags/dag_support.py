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

from airflow.sdk import Asset
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
