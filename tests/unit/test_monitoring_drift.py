"""The embedding and prediction drift checks find localized drift and leave drift-free
windows alone, over several seeds (quality, never timing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftConfig, domain_classifier_test, embedding_drift, prediction_drift

SEEDS = (0, 1, 2)


def _windows(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two drift-free windows of correlated, anisotropic embeddings (as a model's)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    scales = np.linspace(2.0, 0.1, dim)
    draw = lambda: (rng.normal(size=(n, dim)) * scales) @ mixing  # noqa: E731
    return draw().astype(np.float32), draw().astype(np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_shift_in_one_sixteenth_of_the_dims_is_drift(seed: int) -> None:
    reference, current = _windows(2000, 64, seed)
    current[:, :4] += 0.5  # 4 of 64 dims
    result = embedding_drift(reference, current, DriftConfig(seed=seed))
    assert result.drifted, result
    assert result.score > 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_a_shift_in_two_dims_of_normalised_embeddings_is_drift(seed: int) -> None:
    # Isotropic, L2-normalised vectors: no low-variance direction to help the classifier.
    rng = np.random.default_rng(seed)
    reference, current = rng.normal(size=(2000, 128)), rng.normal(size=(2000, 128))
    current[:, :2] += 0.5
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    current /= np.linalg.norm(current, axis=1, keepdims=True)
    result = embedding_drift(reference, current, DriftConfig(seed=seed))
    assert result.drifted, result


@pytest.mark.parametrize("seed", (0, 1, 2, 3, 4))
def test_no_drift_is_not_flagged(seed: int) -> None:
    reference, current = _windows(2000, 64, seed)
    result = embedding_drift(reference, current, DriftConfig(seed=seed))
    assert not result.drifted, result
    assert abs(result.score - 0.5) < 0.05
    assert result.threshold == pytest.approx(0.55)  # large window: the AUC threshold decides


@pytest.mark.parametrize("seed", (0, 1, 2, 3, 4))
def test_a_small_drift_free_window_is_not_flagged(seed: int) -> None:
    # 60 items per side, 128 dims: wider than the window, noisy AUCs.
    reference, current = _windows(60, 128, seed)
    result = embedding_drift(reference, current, DriftConfig(seed=seed))
    assert not result.drifted, result
    assert result.threshold > 0.55  # the shuffled-sides quantile decides here


def test_the_shuffles_measure_the_no_drift_auc() -> None:
    reference, current = _windows(300, 32, 7)
    test = domain_classifier_test(reference, current, permutations=200)
    assert abs(test.null_mean - 0.5) < 0.02
    assert 0.0 < test.null_sd < 0.1
    assert test.null_quantile > test.null_mean


def test_identical_rows_are_no_drift() -> None:
    same = np.ones((100, 8), dtype=np.float32)
    result = embedding_drift(same, same.copy(), DriftConfig())
    assert result.score == pytest.approx(0.5)
    assert not result.drifted


def test_a_window_is_sampled_to_the_configured_size() -> None:
    reference, current = _windows(3000, 16, 0)
    result = embedding_drift(reference, current, DriftConfig(embedding_sample=1000))
    assert "1000+1000 items" in result.method


def _classes(mix: list[float], n: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.choice(["negative", "neutral", "positive"], n, p=mix))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_changed_mix_of_classes_is_drift(seed: int) -> None:
    reference = _classes([0.5, 0.3, 0.2], 5000, seed)
    current = _classes([0.35, 0.35, 0.3], 5000, seed + 100)
    result = prediction_drift(reference, current, DriftConfig(), "prediction:sentiment")
    assert result.drifted, result


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slightly_nudged_mix_and_a_small_window_are_not_drift(seed: int) -> None:
    # Significant at 5000 items, but a small change (below Evidently's default threshold).
    nudged = prediction_drift(
        _classes([0.5, 0.3, 0.2], 5000, seed),
        _classes([0.46, 0.32, 0.22], 5000, seed + 100),
        DriftConfig(),
        "prediction:sentiment",
    )
    assert not nudged.drifted, nudged
    # 50 items per side from one mix: its sampling noise alone.
    small = prediction_drift(
        _classes([0.5, 0.3, 0.2], 50, seed),
        _classes([0.5, 0.3, 0.2], 50, seed + 100),
        DriftConfig(),
        "prediction:sentiment",
    )
    assert not small.drifted, small
