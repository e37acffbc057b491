"""Our checks as Evidently metrics, so a report and the Evidently UI show their scores.

Each metric computes its check with the function the verdict uses (monitoring.drift,
monitoring.signals) on the rows Evidently hands it, which are the rows the verdict
judged (report.render passes the verdict's windows), so the number in the report and
in the UI's panels is the verdict's score. Evidently's supported extension point (a
`SingleValueMetric` and its `SingleValueCalculation`); nothing of Evidently is patched.
The UI reads the stored values without importing this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from evidently.core.datasets import Dataset
from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric

from monitoring.drift import DriftConfig, embedding_drift
from monitoring.signals import SignalCheck, signal_drift

EMBEDDING_METRIC = "EmbeddingDomainClassifierAUC"
SIGNAL_METRIC = "ModalitySignalShift"


def embedding_columns(modality: str, dim: int) -> list[str]:
    return [f"{modality}_{i}" for i in range(dim)]


class EmbeddingDomainClassifierAUC(SingleValueMetric):
    """Held-out ROC AUC of the domain classifier on one modality's embeddings."""

    modality: str
    dim: int
    config: dict[str, Any]  # the DriftConfig fields the check uses

    @classmethod
    def of(cls, modality: str, dim: int, config: DriftConfig) -> EmbeddingDomainClassifierAUC:
        used = ("embedding_sample", "embedding_folds", "embedding_ridge",
                "embedding_auc_threshold", "embedding_quantile", "embedding_permutations",
                "seed")  # fmt: skip
        return cls(modality=modality, dim=dim, config={k: getattr(config, k) for k in used})


class EmbeddingDomainClassifierAUCCalculation(SingleValueCalculation[EmbeddingDomainClassifierAUC]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        if reference_data is None:
            raise ValueError(f"{self.display_name()} needs a reference window")
        columns = embedding_columns(self.metric.modality, self.metric.dim)

        def rows(data: Dataset) -> np.ndarray:
            return data.as_dataframe()[columns].dropna().to_numpy(dtype=np.float32)

        result = embedding_drift(
            rows(reference_data), rows(current_data), DriftConfig(**self.metric.config)
        )
        return self.result(result.score), None

    def display_name(self) -> str:
        return f"Domain classifier ROC AUC: {self.metric.modality} embeddings"


class ModalitySignalShift(SingleValueMetric):
    """Absolute change of a modality signal's mean (a gate weight, an alignment, a
    disagreement or missing-modality rate) from the reference window."""

    check: str
    column: str
    kind: str
    subject: str
    is_rate: bool
    config: dict[str, Any]

    @classmethod
    def of(cls, check: SignalCheck, config: DriftConfig) -> ModalitySignalShift:
        used = ("gate_shift_threshold", "alignment_shift_threshold",
                "disagreement_shift_threshold", "missing_shift_threshold",
                "signal_significance")  # fmt: skip
        return cls(check=check.name, column=check.column, kind=check.kind,
                   subject=check.subject, is_rate=check.is_rate,
                   config={k: getattr(config, k) for k in used})  # fmt: skip


class ModalitySignalShiftCalculation(SingleValueCalculation[ModalitySignalShift]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        if reference_data is None:
            raise ValueError(f"{self.display_name()} needs a reference window")
        m = self.metric
        check = SignalCheck(m.check, m.column, m.kind, m.subject, m.is_rate)
        result = signal_drift(
            check,
            check.values(reference_data.as_dataframe()),
            check.values(current_data.as_dataframe()),
            DriftConfig(**m.config),
        )
        return self.result(result.score), None

    def display_name(self) -> str:
        return f"Change of the mean: {self.metric.subject}"


def check_of(config: dict[str, Any]) -> tuple[str, dict[str, str], str] | None:
    """A report metric's check name, the labels that select its series in the UI, and
    what its score is."""
    kind = config["type"].rsplit(":", 1)[-1]
    if kind == EMBEDDING_METRIC:
        auc = config["config"]["embedding_auc_threshold"]
        return (f"embedding:{config['modality']}", {"modality": config["modality"]},
                f"domain classifier ROC AUC; drift above {auc:g} and above chance")  # fmt: skip
    if kind == SIGNAL_METRIC:
        return (config["check"], {"check": config["check"]},
                "absolute change of the mean from the reference window")  # fmt: skip
    if kind == "ValueDrift":
        column = config["column"]
        name = f"prediction:{column[5:]}" if column.startswith("pred_") else f"column:{column}"
        return (
            name,
            {"column": column},
            f"{config.get('method')} (threshold {config.get('threshold')})",
        )
    return None


def add_trend_panels(project: Any, snapshot: Any) -> list[str]:
    """The Evidently UI project's dashboard: one line plot per check over its reports,
    in the tab of the modality or label it watches (the drift index's groups). Adds only
    what is missing, so every report can call it; returns the titles it added."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    from monitoring.index_page import check_groups

    existing = {p.title for p in project.dashboard.model().panels}
    added = []
    for metric in snapshot.dict()["metrics"]:
        found = check_of(metric["config"])
        if found is None or found[0] in existing:
            continue
        name, labels, meaning = found
        metric_type = metric["config"]["type"].rsplit(":", 1)[-1]
        panel = line_plot_panel(
            title=name,
            values=[PanelMetric(metric=metric_type, metric_labels=labels, legend="score")],
            description=meaning,
            size="half",
        )
        project.dashboard.add_panel(panel, tab=check_groups(name)[0])
        existing.add(name)
        added.append(name)
    return added
