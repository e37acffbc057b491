"""Drift judgements: embeddings per modality, predictions, raw fields (Evidently 0.7).

Embeddings: a domain-classifier two-sample test. It asks the question Evidently's
default method asks (can a linear classifier tell the current window from the
reference? drift when its ROC AUC is above 0.55), on every dimension and with no
projection: a Fisher linear discriminant, cross-validated over the window (at most
`embedding_sample` items per side). A shift in a few dimensions, or along directions in
which the reference barely varies, is what a PCA projection throws away first. The
discriminant gives those directions the most weight. It costs one d x d scatter matrix
per window (about a second for 10k x 256 on 2 cores). Evidently's SGD classifier runs
for many epochs, and its report adds a t-SNE plot. `benchmarks/drift.py` compares the
two verdicts and their times over several seeds.

Predictions: Evidently's ValueDrift with the default's large-window test
(Jensen-Shannon distance >= 0.1), plus a chi-square guard so that the sampling noise of
a small window is not called drift.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's UI/legacy telemetry stays off


class DriftConfig(BaseModel):
    """Thresholds and methods of the drift checks (all configurable)."""

    model_config = ConfigDict(extra="forbid")

    # Embeddings: a cross-validated linear domain classifier on every dimension.
    # Items per side that the verdict and its report look at; larger windows are sampled
    # (seeded), once, so every check and every section of the report sees the same rows.
    embedding_sample: int = Field(10_000, ge=2)
    embedding_folds: int = Field(5, ge=2)
    # Ridge added to the window's covariance, relative to its mean variance and scaled
    # by dims / training items: 0.016 for 10k x 256 per side, 1.6 for 50 x 128 (there,
    # 1.0 against 0.01 took a 4-dim shift's detection from 16 % to 30 % and false alarms
    # from 3.7 % to 2 %, over 300 drift-free windows).
    embedding_ridge: float = Field(1.0, gt=0)
    # Drift when the held-out AUC is above this (Evidently's default threshold) ...
    embedding_auc_threshold: float = 0.55
    # ... and above this quantile of the AUC with the sides shuffled (a false-alarm
    # rate of about 1 - quantile per modality; measured 1.7-2 % in 50 x 64 and 50 x 128
    # windows). In a large window the quantile is about 0.51, so the 0.55 decides. In a
    # window of 50 per side it is about 0.67, so the noise of small windows is not drift.
    embedding_quantile: float = Field(0.99, gt=0.5, lt=1)
    embedding_permutations: int = Field(100, ge=2)  # shuffles that measure that AUC
    # Predicted classes: Evidently's ValueDrift (the default's test for windows over
    # 1000 items) and a chi-square test of the class counts, which must also reject "no
    # change" at this level.
    prediction_method: str = "jensenshannon"
    prediction_threshold: float = 0.1
    prediction_significance: float = Field(0.01, gt=0, lt=1)
    # Modality-aware checks (monitoring/signals.py): drift when the mean moves by this
    # much (absolute) and a test rejects "no change" at `signal_significance`.
    gate_shift_threshold: float = Field(0.1, gt=0)  # a modality's fusion gate weight
    alignment_shift_threshold: float = Field(0.1, gt=0)  # cosine between an item's modalities
    disagreement_shift_threshold: float = Field(
        0.1, gt=0
    )  # share of items whose modalities disagree
    missing_shift_threshold: float = Field(0.2, gt=0)  # share of items without a modality
    signal_significance: float = Field(0.01, gt=0, lt=1)
    # Raw fields and what triggers a retrain: "embeddings", "predictions", "modalities"
    # (the checks above), "data" (a share of the raw fields).
    column_drift_share: float = 0.5  # share of raw columns that must drift for "data drift"
    min_window: int = 50  # fewer served items than this: no verdict
    retrain_on: tuple[str, ...] = ("embeddings", "predictions", "modalities")
    cooldown_minutes: float = 60.0
    seed: int = 0


@dataclass
class DriftResult:
    name: str  # e.g. "embedding:image", "prediction:sentiment", "column:text_length"
    score: float
    drifted: bool
    method: str
    threshold: float | None
    seconds: float
    # The compared means, for checks that compare one (monitoring/signals.py).
    reference: float | None = None
    current: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        np.asarray(x, dtype=np.float32), columns=[f"e{i}" for i in range(x.shape[1])]
    )


@dataclass
class ClassifierTest:
    auc: float  # mean held-out ROC AUC over the folds (0.5: indistinguishable)
    null_quantile: float  # that quantile of the AUC with the sides shuffled (no drift)
    null_mean: float
    null_sd: float
    n_reference: int
    n_current: int
    folds: int
    permutations: int


def domain_classifier_test(
    reference: np.ndarray,
    current: np.ndarray,
    folds: int = 5,
    ridge: float = 1.0,
    quantile: float = 0.99,
    permutations: int = 100,
    rng: np.random.Generator | None = None,
) -> ClassifierTest:
    """How well a linear classifier tells current rows from reference rows, on rows it
    was not fitted on, against the same classifier on shuffled sides.

    In each of `folds` folds, a Fisher discriminant is fitted on the other folds:
    w = (C + ridge)^-1 (mean_current - mean_reference), with C the covariance of the
    training rows. (With the within-side covariance instead of C, w only changes
    length, by Sherman-Morrison, and the AUC is the same.) The held-out rows are ranked
    by x . w, and the AUC is the Mann-Whitney statistic. C does not depend on which
    side a row is on. So the shuffles (sides permuted within each fold) reuse each
    fold's factorised C, and cost one product per fold for all of them. The fold AUCs
    are correlated, because folds share training rows, so the Mann-Whitney formula
    understates their mean's spread (4-6 % false alarms at a nominal 1 % in small
    windows). The shuffles measure it: `null_quantile` = mean + z(quantile) x sd of
    their AUCs.
    """
    from scipy import linalg, stats
    from threadpoolctl import threadpool_limits

    rng = rng or np.random.default_rng(0)
    n_ref, n_cur = len(reference), len(current)
    folds = min(folds, n_ref, n_cur)
    if folds < 2:
        raise ValueError(f"need at least 2 items per side, got {n_ref} and {n_cur}")
    # Rows ordered by fold, so that every fold is a contiguous view.
    fold_of = np.concatenate([rng.permutation(np.arange(n) % folds) for n in (n_ref, n_cur)])
    order = np.argsort(fold_of, kind="stable")
    x = np.concatenate([reference, current]).astype(np.float64)[order]
    x -= x.mean(axis=0)
    side = np.concatenate([np.zeros(n_ref), np.ones(n_cur)])[order]
    bounds = np.searchsorted(fold_of[order], np.arange(folds + 1))
    parts = [slice(bounds[f], bounds[f + 1]) for f in range(folds)]
    # Column 0: the real sides; then the shuffles, each permuting sides within folds.
    labels = np.empty((len(x), permutations + 1))
    labels[:, 0] = side
    for part in parts:
        labels[part, 1:] = rng.permuted(np.repeat(side[part, None], permutations, 1), axis=0)
    dim = x.shape[1]
    # One BLAS thread: these products are small, and on a busy machine a BLAS thread
    # pool waiting for a core is slower than one thread (10x for the solves on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        scatter = np.stack([x[part].T @ x[part] for part in parts])
        sums = np.stack([x[part].sum(axis=0) for part in parts])
        current_sums = np.stack([labels[part].T @ x[part] for part in parts])  # F x (P+1) x D
        current_counts = np.stack([labels[part].sum(axis=0) for part in parts])  # F x (P+1)
        aucs = np.zeros(permutations + 1)
        for f, part in enumerate(parts):
            n = len(x) - (part.stop - part.start)
            mean = (sums.sum(axis=0) - sums[f]) / n
            cov = (scatter.sum(axis=0) - scatter[f] - n * np.outer(mean, mean)) / max(n - 1, 1)
            mean_variance = max(np.trace(cov) / dim, np.finfo(np.float64).tiny)
            cov[np.diag_indices(dim)] += ridge * dim / n * mean_variance
            n_cur_train = current_counts.sum(axis=0) - current_counts[f]
            cur_sum = current_sums.sum(axis=0) - current_sums[f]
            ref_sum = (sums.sum(axis=0) - sums[f]) - cur_sum
            delta = cur_sum / n_cur_train[:, None] - ref_sum / (n - n_cur_train)[:, None]
            try:
                w = linalg.cho_solve(linalg.cho_factor(cov), delta.T)
            except linalg.LinAlgError:
                w = np.linalg.lstsq(cov, delta.T, rcond=None)[0]
            aucs += _held_out_auc(w.T @ x[part].T, labels[part].T)
    aucs /= folds
    null = aucs[1:]
    null_mean = float(null.mean()) if permutations else 0.5
    null_sd = float(null.std(ddof=1)) if permutations > 1 else 0.0
    return ClassifierTest(
        float(aucs[0]),
        null_mean + float(stats.norm.ppf(quantile)) * null_sd,
        null_mean,
        null_sd,
        n_ref,
        n_cur,
        folds,
        permutations,
    )


def _held_out_auc(scores: np.ndarray, is_current: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of scores for its row of 0/1 labels (Mann-Whitney): one
    argsort per row, and average ranks where scores tie (so a constant embedding scores
    0.5, not whatever order its rows came in)."""
    from scipy import stats

    order = np.argsort(scores, axis=1)
    ordered = np.take_along_axis(scores, order, axis=1)
    if np.any(ordered[:, 1:] == ordered[:, :-1]):
        rank_sum = (stats.rankdata(scores, axis=1) * is_current).sum(axis=1)
    else:
        rank_sum = np.take_along_axis(is_current, order, axis=1) @ np.arange(
            1.0, scores.shape[1] + 1
        )
    n_pos = is_current.sum(axis=1)
    n_neg = scores.shape[1] - n_pos
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def embedding_drift(
    reference: np.ndarray, current: np.ndarray, config: DriftConfig, name: str = "embedding"
) -> DriftResult:
    """Has the embedding distribution moved? Drift when a cross-validated linear
    classifier on every dimension tells the windows apart: held-out ROC AUC above
    `embedding_auc_threshold` and above the `embedding_quantile` of a drift-free AUC."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    ref = _sample(np.asarray(reference), config.embedding_sample, rng)
    cur = _sample(np.asarray(current), config.embedding_sample, rng)
    test = domain_classifier_test(
        ref,
        cur,
        config.embedding_folds,
        config.embedding_ridge,
        config.embedding_quantile,
        config.embedding_permutations,
        rng,
    )
    threshold = max(config.embedding_auc_threshold, test.null_quantile)
    return DriftResult(
        name,
        test.auc,
        test.auc > threshold,
        f"domain classifier (Fisher discriminant on all {ref.shape[1]} dims, "
        f"{test.folds}-fold ROC AUC, {test.n_reference}+{test.n_current} items)",
        round(threshold, 4),
        time.perf_counter() - started,
    )


def evidently_default_embedding_drift(
    reference: np.ndarray, current: np.ndarray, name: str = "embedding", report: bool = True
) -> DriftResult:
    """Evidently's out-of-the-box path: a Report with EmbeddingsDrift and its default
    method on the whole window (what `benchmarks/drift.py` compares against).

    With `report=False`, only the default method's call that the report's metric makes,
    on the same frames (the same verdict, without the report's t-SNE picture of 2500 +
    2500 points, which takes most of the report's time)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    from evidently.metrics import EmbeddingsDrift
    from evidently.tests import lte

    started = time.perf_counter()
    default = model(bootstrap=len(reference) < 1000)  # Evidently's choice when none is given
    if not report:
        score, drifted, _ = default(_frame(current), _frame(reference))
        return DriftResult(
            name,
            float(score),
            bool(drifted),
            "evidently default: model() (method only)",
            default.threshold,
            time.perf_counter() - started,
        )
    columns = [f"e{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=[], embeddings={name: columns})
    evidently_report = Report(
        [
            EmbeddingsDrift(
                embeddings_name=name, drift_method=default, tests=[lte(default.threshold)]
            )
        ],
        include_tests=True,
    )
    run = evidently_report.run(
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


@dataclass
class ValueDriftOutcome:
    """One column's result from Evidently's ValueDrift."""

    score: float
    failed: bool  # its test failed: the column drifted by Evidently's threshold
    method: str
    threshold: float | None


def value_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    method: str | None = None,
    threshold: float | None = None,
) -> dict[str, ValueDriftOutcome]:
    """Evidently's ValueDrift on each column, in one report: column -> outcome.

    Categorical columns are compared as strings. `method`/`threshold` None: Evidently's
    choice by column type and window size. The one place that reads Evidently's result."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    ref = reference[numerical + categorical].copy()
    cur = current[numerical + categorical].copy()
    for col in categorical:
        ref[col] = ref[col].astype(str)
        cur[col] = cur[col].astype(str)
    options = {} if method is None else {"method": method, "threshold": threshold}
    metrics = [ValueDrift(column=c, **options) for c in numerical + categorical]
    body = (
        Report(metrics, include_tests=True)
        .run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
        .dict()
    )
    failed = {t["metric_config"]["metric_id"] for t in body["tests"] if t["status"] == "FAIL"}
    outcomes = {}
    for metric in body["metrics"]:
        config = metric["config"]
        outcomes[config["column"]] = ValueDriftOutcome(
            float(metric["value"]),
            metric["id"] in failed,
            str(config.get("method")),
            config.get("threshold"),
        )
    return outcomes


def _value_drift(
    reference: pd.Series, current: pd.Series, method: str | None, threshold: float | None
) -> ValueDriftOutcome:
    """ValueDrift on one categorical column (predicted classes)."""
    outcomes = value_drift(
        pd.DataFrame({"value": reference.to_numpy()}),
        pd.DataFrame({"value": current.to_numpy()}),
        [],
        ["value"],
        method,
        threshold,
    )
    return outcomes["value"]


def class_counts_p_value(reference: pd.Series, current: pd.Series) -> float:
    """Chi-square test that both windows draw their classes from one distribution."""
    from scipy.stats import chi2_contingency

    table = pd.crosstab(
        np.r_[np.zeros(len(reference)), np.ones(len(current))],
        np.r_[reference.astype(str).to_numpy(), current.astype(str).to_numpy()],
    ).to_numpy()
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 1.0  # one side empty, or one class on both sides: nothing has moved
    return float(chi2_contingency(table).pvalue)


def prediction_drift(
    reference: pd.Series, current: pd.Series, config: DriftConfig, name: str
) -> DriftResult:
    """Has the distribution of predicted classes moved? Drift when Evidently's test
    (Jensen-Shannon distance by default) passes its threshold and the class counts
    differ beyond chance (chi-square p below `prediction_significance`)."""
    started = time.perf_counter()
    outcome = _value_drift(
        reference, current, config.prediction_method, config.prediction_threshold
    )
    p_value = class_counts_p_value(reference, current)
    return DriftResult(
        name,
        outcome.score,
        outcome.failed and p_value < config.prediction_significance,
        f"{config.prediction_method}, chi-square p={p_value:.2g} "
        f"(needs < {config.prediction_significance:g})",
        config.prediction_threshold,
        time.perf_counter() - started,
    )


def evidently_default_prediction_drift(
    reference: pd.Series, current: pd.Series, name: str = "prediction"
) -> DriftResult:
    """Evidently's ValueDrift with no method given: its choice by window size
    (chi-square p < 0.05 up to 1000 reference items, Jensen-Shannon >= 0.1 above)."""
    started = time.perf_counter()
    outcome = _value_drift(reference, current, None, None)
    return DriftResult(
        name,
        outcome.score,
        outcome.failed,
        f"evidently default: {outcome.method}",
        outcome.threshold,
        time.perf_counter() - started,
    )
