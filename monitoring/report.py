"""A monitoring window against its reference: the verdict.

A window is what a model saw: one row per item with raw-field statistics, modality
presence, predicted classes and the modality signals (monitoring/signals.py), plus the
per-modality embeddings. The reference is the training snapshot scored by the same
model. The report a person reads is monitoring/report_page.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dualmedia import modalities
from monitoring.drift import (
    DriftConfig,
    DriftResult,
    embedding_drift,
    prediction_drift,
    value_drift,
)
from monitoring.signals import SignalCheck, signal_checks, signal_drift

# Raw fields and presence flags the monitor compares, from the modality registry.
RAW_COLUMNS = tuple(c for m in modalities.specs() for c in m.monitored)
PRESENCE_COLUMNS = tuple(m.has_column for m in modalities.specs())


@dataclass
class Window:
    frame: pd.DataFrame  # id, RAW_COLUMNS, PRESENCE_COLUMNS, pred_<label>, signal columns
    # modality -> N x D, row i is item i's (NaN for an item without the modality)
    embeddings: dict[str, np.ndarray]
    model_version: str = ""

    @property
    def prediction_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith("pred_")]

    def present(self, modality: str) -> np.ndarray:
        """The embeddings of the items that have the modality, in item order."""
        vectors = self.embeddings[modality]
        has = self.frame[modalities.get(modality).has_column].to_numpy(dtype=bool)
        return vectors[has & ~np.isnan(vectors).any(axis=1)]

    def sample(self, n: int, seed: int) -> Window:
        """At most n items, drawn once (seeded); the same rows of the frame and vectors."""
        if len(self.frame) <= n:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.frame), n, replace=False))
        return Window(
            self.frame.iloc[rows].reset_index(drop=True),
            {m: e[rows] for m, e in self.embeddings.items()},
            self.model_version,
        )


@dataclass
class Verdict:
    drifted: bool
    results: list[DriftResult]
    reasons: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # Comparable.skipped: checks not run
    n_reference: int = 0
    n_current: int = 0
    seconds: float = 0.0
    # The rows every check judged (the windows, sampled); the report shows these.
    windows: tuple[Window, Window] | None = field(default=None, repr=False)
    raw_fields: str = ""  # how many raw fields drifted, against the share that counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "reasons": self.reasons,
            "skipped": self.skipped,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "seconds": round(self.seconds, 3),
            "raw_fields": self.raw_fields,
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
    signals: list[SignalCheck]  # modality-aware checks with enough values on both sides
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
    for modality in reference.embeddings:
        ref_emb = reference.present(modality)
        cur_emb = (
            current.present(modality)
            if modality in current.embeddings
            else np.empty((0, ref_emb.shape[1]), dtype=np.float32)
        )
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
    signals = [
        check
        for check in signal_checks(reference.frame)
        if enough_items(
            check.name, len(check.values(reference.frame)), len(check.values(current.frame))
        )
    ]
    return Comparable(embeddings, predictions, numeric, signals, skipped)


def _column_drift(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str]
) -> list[DriftResult]:
    """Raw fields, Evidently's default test for each."""
    started = time.perf_counter()
    outcomes = value_drift(reference, current, numeric, [])
    seconds = (time.perf_counter() - started) / max(len(outcomes), 1)
    return [
        DriftResult(f"column:{column}", o.score, o.failed, o.method, o.threshold, seconds)
        for column, o in outcomes.items()
    ]


def judge(reference: Window, current: Window, config: DriftConfig) -> Verdict:
    """Every drift check, and whether the window calls for retraining."""
    started = time.perf_counter()
    reference = reference.sample(config.embedding_sample, config.seed)
    current = current.sample(config.embedding_sample, config.seed + 1)
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
    signals = {
        check.name: signal_drift(
            check, check.values(reference.frame), check.values(current.frame), config
        )
        for check in compared.signals
    }
    results += signals.values()
    columns = (
        _column_drift(reference.frame, current.frame, compared.numeric) if compared.numeric else []
    )
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
    if "modalities" in config.retrain_on:
        reasons += [
            check.describe(signals[check.name].reference, signals[check.name].current)
            for check in compared.signals
            if signals[check.name].drifted
        ]
    drifted_columns = [r for r in columns if r.drifted]
    raw_fields = (
        f"{len(drifted_columns)} of {len(columns)} raw fields drifted "
        f"({config.column_drift_share:.0%} needed for data drift"
        f"{'' if 'data' in config.retrain_on else ', which does not ask for retraining'})"
    )
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
        windows=(reference, current),
        raw_fields=raw_fields,
    )
