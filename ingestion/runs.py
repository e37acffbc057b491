"""Where an ingestion run keeps its state between steps, and the error its steps raise.

A run lives under `s3://<lake>/ingest-runs/<dataset>/<snapshot_id>/`; `plan.json` says
what the run does and every later step starts by reading it.
"""

from __future__ import annotations

import json
from typing import Any

from dualmedia.storage import ObjectStore, S3Uri


class IngestError(RuntimeError):
    """Ingestion refused the data; the message says why and where the reports are."""


def run_prefix(lake_bucket: str, dataset: str, snapshot_id: str) -> S3Uri:
    return S3Uri(lake_bucket, f"ingest-runs/{dataset}/{snapshot_id}")


def load_plan(store: ObjectStore, plan_uri: str) -> dict[str, Any]:
    return json.loads(store.read_text(plan_uri))
