"""Signals only a multimodal model has, per item, and their checks against the reference.

Per item (columns of a monitoring window's frame):

    gate_<m>            the fusion gate's weight on modality m (NaN where m is absent)
    align_<a>_<b>       the cosine between the item's own a and b embeddings in the shared
                        space (NaN unless both are present)
    disagree_<label>    1 when two present modalities, each confident and reliable,
                        predict different classes of the label (`scoring.disagreement`),
                        0 when they agree, NaN with fewer than two modalities
    has_<m>             whether the item had modality m (its missing-modality rate,
                        over the rows that are whole items: `whole_item`)

Each check compares a window's mean of one of them with the reference's: its score is
the absolute change, it drifts when that change reaches the configured threshold and
is beyond chance (Welch's t-test for weights and cosines, chi-square for rates, at
`signal_significance`), so the noise of a small window is not a change.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dualmedia import modalities
from monitoring.drift import DriftConfig, DriftResult, class_counts_p_value

# A frame column: whether the row is a whole item (a record, an `insights` request) rather
# than one modality embedded on its own (an `embed` request).
WHOLE_ITEM = "whole_item"


def gate_column(modality: str) -> str:
    return f"gate_{modality}"


def alignment_column(a: str, b: str) -> str:
    return f"align_{a}_{b}"


def disagreement_column(label: str) -> str:
    return f"disagree_{label}"


def modality_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of modalities, in registry order."""
    return list(itertools.combinations(modalities.ordered(names), 2))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else math.nan


def item_signals(
    embeddings: Mapping[str, Sequence[float] | np.ndarray],
    gates: Mapping[str, float],
    disagreeing: Iterable[str] | None,
    labels: Iterable[str],
) -> dict[str, float]:
    """One item's signal columns from its present modalities' embeddings and gate
    weights, and the labels its modalities disagreed on (None: not predicted)."""
    present = modalities.ordered(embeddings)
    row: dict[str, float] = {gate_column(m): float(w) for m, w in gates.items()}
    for a, b in modality_pairs(present):
        row[alignment_column(a, b)] = _cosine(
            np.asarray(embeddings[a], dtype=np.float64), np.asarray(embeddings[b], dtype=np.float64)
        )
    if disagreeing is not None and len(present) >= 2:
        flagged = set(disagreeing)
        row.update({disagreement_column(n): float(n in flagged) for n in labels})
    return row


@dataclass(frozen=True)
class SignalCheck:
    """One check: a column of the window frame whose mean is compared."""

    name: str  # e.g. "gate:audio", "alignment:text/audio"
    column: str
    kind: str  # "gate", "alignment", "disagreement", "missing"
    subject: str  # what the sentence names: "the audio gate weight", "text/audio alignment"
    is_rate: bool  # shown as a percentage, tested by chi-square

    def threshold(self, config: DriftConfig) -> float:
        return {
            "gate": config.gate_shift_threshold,
            "alignment": config.alignment_shift_threshold,
            "disagreement": config.disagreement_shift_threshold,
            "missing": config.missing_shift_threshold,
        }[self.kind]

    def values(self, frame: pd.DataFrame) -> pd.Series:
        if self.column not in frame:
            return pd.Series(dtype="float64")
        values = frame[self.column]
        if self.kind == "missing":
            # Only whole items: an `embed` request carries one modality by design.
            values = values[frame[WHOLE_ITEM].map(str) == "True"] if WHOLE_ITEM in frame else values
            # A flag: a bool or (in an Evidently dataset) its string.
            return (values.map(str) != "True").astype("float64")
        return pd.to_numeric(values, errors="coerce").dropna().astype("float64")

    def describe(self, reference: float, current: float) -> str:
        moved = "rose" if current > reference else "fell"
        if self.is_rate:
            return f"{self.subject} {moved} from {reference:.0%} to {current:.0%}"
        return f"{self.subject} {moved} from {reference:.2f} to {current:.2f}"


def signal_checks(frame: pd.DataFrame) -> list[SignalCheck]:
    """The checks a window frame has columns for, in a stable order."""
    names = modalities.names()
    labels = [c.removeprefix("disagree_") for c in frame.columns if c.startswith("disagree_")]
    candidates = [
        SignalCheck(f"gate:{m}", gate_column(m), "gate", f"the {m} gate weight", False)
        for m in names
    ]
    candidates += [
        SignalCheck(f"alignment:{a}/{b}", alignment_column(a, b), "alignment",
                    f"{a}/{b} alignment", False)
        for a, b in modality_pairs(names)
    ]  # fmt: skip
    candidates += [
        SignalCheck(f"disagreement:{n}", disagreement_column(n), "disagreement",
                    f"{n} disagreement between modalities", True)
        for n in labels
    ]  # fmt: skip
    candidates += [
        SignalCheck(f"missing:{m.name}", m.has_column, "missing",
                    f"the share of items without {m.name}", True)
        for m in modalities.specs()
        if m.has_column in frame and frame[m.has_column].any()  # a modality the data has
    ]  # fmt: skip
    return [c for c in candidates if c.column in frame]


def signal_drift(
    check: SignalCheck, reference: pd.Series, current: pd.Series, config: DriftConfig
) -> DriftResult:
    """Compare one signal's mean between the windows (values already dropped of NaN)."""
    from scipy import stats

    started = time.perf_counter()
    ref_mean, cur_mean = float(reference.mean()), float(current.mean())
    if check.is_rate:
        p_value = class_counts_p_value(reference.astype(bool), current.astype(bool))
        test = "chi-square"
    else:
        same = reference.std() == 0 and current.std() == 0
        p_value = (
            1.0
            if same and ref_mean == cur_mean
            else 0.0
            if same
            else float(stats.ttest_ind(reference, current, equal_var=False).pvalue)
        )
        test = "Welch t-test"
    threshold = check.threshold(config)
    shift = abs(cur_mean - ref_mean)
    return DriftResult(
        check.name,
        shift,
        shift >= threshold and p_value < config.signal_significance,
        f"change of the mean, {test} p={p_value:.2g} (needs < {config.signal_significance:g})",
        threshold,
        time.perf_counter() - started,
        reference=round(ref_mean, 4),
        current=round(cur_mean, 4),
    )


def signal_columns(frame: pd.DataFrame) -> list[str]:
    """The per-item signal columns of a frame (not the presence flags)."""
    return [c for c in frame.columns if c.startswith(("gate_", "align_", "disagree_"))]
