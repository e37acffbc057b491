"""A monitoring window against its reference: the verdict and the browsable report.

A window is what a model saw: one row per item with raw-field statistics, modality
presence and predicted classes, plus the per-modality embeddings. The reference is
the training snapshot scored by the same model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dualmedia import modalities
from monitoring.drift import (
    DriftConfig,
    DriftResult,
    _sample,
    embedding_drift,
    embedding_method,
    prediction_drift,
    value_drift,
)

# Raw fields and presence flags the monitor compares, from the modality registry.
RAW_COLUMNS = tuple(c for m in modalities.specs() for c in m.monitored)
PRESENCE_COLUMNS = tuple(m.has_column for m in modalities.specs())


@dataclass
class Window:
    frame: pd.DataFrame  # id, RAW_COLUMNS, PRESENCE_COLUMNS, pred_<label>
    embeddings: dict[str, np.ndarray]  # modality or "fused" -> N_m x D
    model_version: str = ""

    @property
    def prediction_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith("pred_")]


@dataclass
class Verdict:
    drifted: bool
    results: list[DriftResult]
    reasons: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # Comparable.skipped: checks not run
    n_reference: int = 0
    n_current: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "reasons": self.reasons,
            "skipped": self.skipped,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "seconds": round(self.seconds, 3),
            "results": [r.to_dict() for r in self.results],
        }

    def scores(self) -> dict[str, float]:
        return {r.name: round(r.score, 4) for r in self.results}


@dataclass
class Comparable:
    """What a reference and a current window can be compared on. The verdict and the
    report both look at exactly this, and `skipped` names what they leave out (a "no
    drift" must not hide that a modality was never looked at)."""

    embeddings: dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (reference, current)
    predictions: list[str]  # pred_<label> columns
    numeric: list[str]  # raw fields with values on both sides (no images: no brightness)
    skipped: list[str]


def comparable(reference: Window, current: Window, config: DriftConfig) -> Comparable:
    skipped: list[str] = []

    def enough_items(name: str, n_reference: int, n_current: int) -> bool:
        if min(n_reference, n_current) >= config.min_window:
            return True
        skipped.append(
            f"{name} not checked: {n_reference} reference and {n_current} current items "
            f"(each side needs {config.min_window})"
        )
        return False

    embeddings = {}
    for modality, ref_emb in reference.embeddings.items():
        cur_emb = current.embeddings.get(modality, np.empty((0, ref_emb.shape[1])))
        if enough_items(f"embedding:{modality}", len(ref_emb), len(cur_emb)):
            embeddings[modality] = (ref_emb, cur_emb)
    predictions = []
    for col in reference.prediction_columns:
        # A served window of `embed` requests only has no predictions at all.
        n_current = int(current.frame[col].notna().sum()) if col in current.frame else 0
        n_reference = int(reference.frame[col].notna().sum())
        if enough_items(f"prediction:{col[5:]}", n_reference, n_current):
            predictions.append(col)
    numeric = [
        c
        for c in RAW_COLUMNS
        if reference.frame[c].notna().sum() > 5 and current.frame[c].notna().sum() > 5
    ]
    return Comparable(embeddings, predictions, numeric, skipped)


def _column_drift(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str]
) -> list[DriftResult]:
    """Raw fields (numbers) and missing-modality rates (categories), Evidently's defaults."""
    started = time.perf_counter()
    outcomes = value_drift(reference, current, numeric, list(PRESENCE_COLUMNS))
    seconds = (time.perf_counter() - started) / max(len(outcomes), 1)
    return [
        DriftResult(f"column:{column}", o.score, o.failed, o.method, o.threshold, seconds)
        for column, o in outcomes.items()
    ]


def judge(reference: Window, current: Window, config: DriftConfig) -> Verdict:
    """Every drift check, and whether the window calls for retraining."""
    started = time.perf_counter()
    compared = comparable(reference, current, config)
    results = [
        embedding_drift(ref_emb, cur_emb, config, name=f"embedding:{modality}")
        for modality, (ref_emb, cur_emb) in compared.embeddings.items()
    ]
    results += [
        prediction_drift(
            reference.frame[col].dropna(),
            current.frame[col].dropna(),
            config,
            name=f"prediction:{col[5:]}",
        )
        for col in compared.predictions
    ]
    columns = _column_drift(reference.frame, current.frame, compared.numeric)
    results += columns
    reasons = []
    kinds = {"embeddings": "embedding:", "predictions": "prediction:"}
    for kind in config.retrain_on:
        if kind in kinds:
            reasons += [
                f"{r.name} drifted (score {r.score:.3f})"
                for r in results
                if r.name.startswith(kinds[kind]) and r.drifted
            ]
    drifted_columns = [r for r in columns if r.drifted]
    if columns and len(drifted_columns) / len(columns) >= config.column_drift_share:
        names = ", ".join(r.name for r in drifted_columns)
        if "data" in config.retrain_on:
            reasons.append(f"raw fields drifted: {names}")
    enough = len(current.frame) >= config.min_window
    return Verdict(
        drifted=enough and bool(reasons),
        results=results,
        reasons=reasons if enough else [f"window too small ({len(current.frame)} items)"],
        skipped=compared.skipped,
        n_reference=len(reference.frame),
        n_current=len(current.frame),
        seconds=time.perf_counter() - started,
    )


def render(reference: Window, current: Window, config: DriftConfig, verdict: Verdict) -> Any:
    """The Evidently report a person reviews (HTML and JSON): raw fields and missing
    modalities, predicted classes, and embeddings, on a sample of `report_sample` rows
    per side (the embedding plot's t-SNE stays cheap). Each metric looks at one column
    at a time, so the sampled embedding rows need not be the sampled items."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(config.seed)
    compared = comparable(reference, current, config)  # what the verdict looked at
    k = min(
        config.report_sample,
        len(reference.frame),
        len(current.frame),
        *(min(len(r), len(c)) for r, c in compared.embeddings.values()),
    )
    numeric, predicted = compared.numeric, compared.predictions
    categorical = list(PRESENCE_COLUMNS) + predicted
    ref_df = reference.frame.sample(k, random_state=config.seed)[numeric + categorical]
    cur_df = current.frame.sample(k, random_state=config.seed)[numeric + categorical]
    ref_df, cur_df = ref_df.reset_index(drop=True), cur_df.reset_index(drop=True)
    embeddings: dict[str, list[str]] = {}
    for modality, (ref_emb, cur_emb) in compared.embeddings.items():
        cols = [f"{modality}_{i}" for i in range(ref_emb.shape[1])]
        embeddings[modality] = cols
        ref_df[cols] = _sample(ref_emb, k, rng)
        cur_df[cols] = _sample(cur_emb, k, rng)
    for col in categorical:
        ref_df[col] = ref_df[col].astype(str)
        cur_df[col] = cur_df[col].astype(str)
    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=categorical, embeddings=embeddings or None
    )
    metrics: list[Any] = [DataDriftPreset(columns=numeric + list(PRESENCE_COLUMNS))]
    metrics += [
        ValueDrift(column=c, method=config.prediction_method, threshold=config.prediction_threshold)
        for c in predicted
    ]
    method = embedding_method(config)
    metrics += [EmbeddingsDrift(embeddings_name=m, drift_method=method) for m in embeddings]
    with _pca_instead_of_tsne():
        return Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur_df, data_definition=definition),
            Dataset.from_pandas(ref_df, data_definition=definition),
            metadata={
                "verdict": "drift" if verdict.drifted else "no drift",
                "reasons": "; ".join(verdict.reasons),
                "not checked": "; ".join(verdict.skipped) or "-",
            },
            name="drift report",
        )


@contextlib.contextmanager
def _pca_instead_of_tsne() -> Iterator[None]:
    """Evidently draws embeddings in 2-D with t-SNE: ~12 s per modality for 400 points
    on 2 cores. The picture only illustrates the verdict (computed separately), so a
    PCA projection (milliseconds) stands in while the report is built."""
    from evidently.legacy.metrics.data_drift import embeddings_drift
    from sklearn.decomposition import PCA

    original = embeddings_drift.TSNE
    embeddings_drift.TSNE = lambda n_components=2, **_: PCA(n_components=n_components)
    try:
        yield
    finally:
        embeddings_drift.TSNE = original
