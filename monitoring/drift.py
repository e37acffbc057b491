"""Drift judgements with Evidently 0.7: embeddings per modality, predictions, raw fields.

Verdicts are computed on the whole window with methods chosen for speed: Evidently's
domain-classifier method on PCA components of a bounded sample, with a bootstrapped
threshold so that small windows do not raise false alarms. The browsable HTML report
(whose embedding plot runs t-SNE) is built on a smaller sample, so a 10k x 256
window is judged in seconds; `benchmarks/drift.py` compares it with Evidently's
default on the same data.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's UI/legacy telemetry stays off


class DriftConfig(BaseModel):
    """Thresholds and methods of the drift checks (all configurable)."""

    model_config = ConfigDict(extra="forbid")

    # Embeddings: domain classifier (ROC AUC) on PCA components of a sample.
    embedding_pca_components: int = 32
    embedding_sample: int = 5000
    embedding_bootstrap: bool = True
    embedding_auc_threshold: float = 0.55  # used when bootstrap is off
    # With bootstrap: drift when the AUC beats this quantile of random classifiers' AUCs,
    # i.e. a false-alarm rate of 1 - quantile per modality (Evidently's default is 0.95;
    # three modalities at 5% each would flag one clean window in seven).
    embedding_quantile: float = 0.99
    # Raw fields and predictions.
    column_drift_share: float = 0.5  # share of raw columns that must drift for "data drift"
    prediction_method: str = "psi"
    prediction_threshold: float = 0.2
    # What triggers a retrain.
    min_window: int = 50  # fewer served items than this: no verdict
    retrain_on: tuple[str, ...] = ("embeddings", "predictions")
    cooldown_minutes: float = 60.0
    # The HTML report (t-SNE cost grows with this).
    report_sample: int = 400
    seed: int = 0


@dataclass
class DriftResult:
    name: str  # e.g. "embedding:image", "prediction:sentiment", "column:text_length"
    score: float
    drifted: bool
    method: str
    threshold: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        np.asarray(x, dtype=np.float32), columns=[f"e{i}" for i in range(x.shape[1])]
    )


def embedding_method(config: DriftConfig) -> Any:
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    return model(
        threshold=config.embedding_auc_threshold,
        bootstrap=config.embedding_bootstrap,
        quantile_probability=config.embedding_quantile,
        pca_components=config.embedding_pca_components,
    )


def embedding_drift(
    reference: np.ndarray, current: np.ndarray, config: DriftConfig, name: str = "embedding"
) -> DriftResult:
    """Has the embedding distribution moved? (Evidently's model method, PCA, sample.)"""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    ref = _sample(reference, config.embedding_sample, rng)
    cur = _sample(current, config.embedding_sample, rng)
    components = min(config.embedding_pca_components, ref.shape[1], len(ref) - 1, len(cur) - 1)
    method = embedding_method(config.model_copy(update={"embedding_pca_components": components}))
    # Evidently's method adds a column to the frames it is given: hand it fresh ones.
    score, drifted, method_name = method(_frame(cur), _frame(ref))
    return DriftResult(
        name,
        float(score),
        bool(drifted),
        f"{method_name}(pca={components}, sample={config.embedding_sample}, "
        f"bootstrap={config.embedding_bootstrap})",
        None if config.embedding_bootstrap else config.embedding_auc_threshold,
        time.perf_counter() - started,
    )


def evidently_default_embedding_drift(
    reference: np.ndarray, current: np.ndarray, name: str = "embedding"
) -> DriftResult:
    """Evidently's out-of-the-box path: a Report with EmbeddingsDrift and its default
    method on the whole window (what `benchmarks/drift.py` compares against)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    from evidently.metrics import EmbeddingsDrift
    from evidently.tests import lte

    started = time.perf_counter()
    columns = [f"e{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=[], embeddings={name: columns})
    default = model(bootstrap=len(reference) < 1000)  # Evidently's choice when none is given
    report = Report(
        [
            EmbeddingsDrift(
                embeddings_name=name, drift_method=default, tests=[lte(default.threshold)]
            )
        ],
        include_tests=True,
    )
    run = report.run(
        Dataset.from_pandas(_frame(current), data_definition=definition),
        Dataset.from_pandas(_frame(reference), data_definition=definition),
    )
    body = run.dict()
    score = float(body["metrics"][0]["value"])
    drifted = any(t["status"] == "FAIL" for t in body["tests"])
    return DriftResult(
        name,
        score,
        drifted,
        "evidently default: model()",
        default.threshold,
        time.perf_counter() - started,
    )


def prediction_drift(
    reference: pd.Series, current: pd.Series, config: DriftConfig, name: str
) -> DriftResult:
    """Has the distribution of predicted classes moved? (PSI by default.)"""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    started = time.perf_counter()
    definition = DataDefinition(categorical_columns=["value"])
    ref = pd.DataFrame({"value": reference.astype(str).to_numpy()})
    cur = pd.DataFrame({"value": current.astype(str).to_numpy()})
    report = Report(
        [
            ValueDrift(
                column="value",
                method=config.prediction_method,
                threshold=config.prediction_threshold,
            )
        ],
        include_tests=True,
    )
    body = report.run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    ).dict()
    score = float(body["metrics"][0]["value"])
    drifted = any(t["status"] == "FAIL" for t in body["tests"])
    return DriftResult(
        name,
        score,
        drifted,
        config.prediction_method,
        config.prediction_threshold,
        time.perf_counter() - started,
    )
