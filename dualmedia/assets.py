"""The Airflow assets that start training: their names, URIs and event payloads.

Plain strings and dicts (no Airflow import): the DAG files build `Asset`s from these,
and code outside Airflow (the `monitor` command) posts events for them by name.

- `dualmedia-feedback`: a new labelled batch arrived in a raw dataset
  (dags/feedback_batches.py emits it);
- `dualmedia-retrain`: the drift monitor asks for retraining (dags/drift_monitor.py, or
  `dualmedia monitor` through the REST API).

An event's extra says what to train on: `dataset_uri` (required), and optionally
`train_config` and `reason`. The training DAG (scheduled on either asset) reads them
from its triggering event, so retraining works for any dataset.
"""

from __future__ import annotations

from dualmedia.settings import Settings

FEEDBACK = "dualmedia-feedback"
RETRAIN = "dualmedia-retrain"
# The keys of an event's extra that a training run takes over as its parameters.
RUN_KEYS = ("dataset_uri", "train_config", "reason")


def feedback_uri(settings: Settings) -> str:
    return f"s3://{settings.raw_bucket}/customer-feedback"


def retrain_uri(settings: Settings) -> str:
    return f"s3://{settings.lake_bucket}/monitoring/retrain"
