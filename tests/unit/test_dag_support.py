"""How a training run's parameters come from its triggering asset events."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from types import SimpleNamespace

from dualmedia.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "dags"))
from dag_support import FEEDBACK, RETRAIN, run_parameters

DEFAULTS = {"dataset_uri": "s3://raw/customer-feedback", "train_config": "default", "epochs": 3}


def event(minute: int, **extra: object) -> SimpleNamespace:
    """The fields of Airflow's AssetEventDagRunReference that run_parameters reads."""
    return SimpleNamespace(timestamp=datetime(2026, 12, 1, 12, minute, tzinfo=UTC), extra=extra)


def test_a_run_by_hand_keeps_its_form() -> None:
    assert run_parameters(DEFAULTS, None) == DEFAULTS
    assert run_parameters(DEFAULTS, {}) == DEFAULTS


def test_the_newest_event_names_the_dataset_and_why() -> None:
    reason = {"drift": ["embedding:image"], "report": "s3://lake/r.html"}
    events = {
        FEEDBACK: [event(1, dataset_uri="s3://raw/older", new_batches=["b2"])],
        RETRAIN: [
            event(5, dataset_uri="s3://raw/shop-b", train_config="tiny", reason=reason),
            event(3, dataset_uri="s3://raw/shop-a"),
        ],
    }
    run = run_parameters(DEFAULTS, events)
    assert run["dataset_uri"] == "s3://raw/shop-b"
    assert run["train_config"] == "tiny" and run["reason"] == reason
    assert run["epochs"] == 3  # not named by the event: the form's value
    assert "new_batches" not in run  # only the run keys of dualmedia.assets are taken


def test_an_event_without_a_value_leaves_the_form_value() -> None:
    run = run_parameters(DEFAULTS, {FEEDBACK: [event(1, dataset_uri="s3://raw/x", reason=None)]})
    assert run == {**DEFAULTS, "dataset_uri": "s3://raw/x"}
