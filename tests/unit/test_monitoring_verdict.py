"""The drift verdict says which checks it could not run, instead of silently leaving
them out (a "no drift" that never looked at a modality)."""

from __future__ import annotations

import numpy as np

from monitoring.drift import DriftConfig
from monitoring.report import Window, judge
from monitoring.report_page import evidently_report
from monitoring.window import _frame_from_rows


def _window(
    n: int,
    n_audio: int,
    shift: float,
    seed: int,
    n_predicted: int | None = None,
    audio_shift_dims: int = 0,
) -> Window:
    rng = np.random.default_rng(seed)
    n_predicted = n if n_predicted is None else n_predicted
    rows = [
        {
            "has_text": True,
            "has_audio": i < n_audio,
            "text_length": float(rng.integers(20, 200)),
            **(
                {"pred_sentiment": str(rng.choice(["negative", "neutral", "positive"]))}
                if i < n_predicted
                else {}
            ),
        }
        for i in range(n)
    ]

    def vectors(m: int, shifted_dims: int = 0) -> np.ndarray:
        v = rng.normal(size=(m, 64)) + shift
        v[:, :shifted_dims] += 1.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    embeddings = {"text": vectors(n)}
    if n_audio:  # item-aligned: the items without a voice note have a NaN row
        audio = np.full((n, 64), np.nan)
        audio[:n_audio] = vectors(n_audio, audio_shift_dims)
        embeddings["audio"] = audio
    return Window(_frame_from_rows(rows), embeddings)


def test_a_modality_with_too_few_items_is_reported_as_not_checked() -> None:
    config = DriftConfig(min_window=50)
    reference = _window(200, n_audio=20, shift=0.0, seed=0)  # 20 audio items: too few
    current = _window(100, n_audio=100, shift=0.0, seed=1)
    verdict = judge(reference, current, config)

    checked = {r.name for r in verdict.results}
    assert "embedding:text" in checked and "prediction:sentiment" in checked
    assert "embedding:audio" not in checked
    assert verdict.skipped == [
        "embedding:audio not checked: 20 reference and 100 current items (each side needs 50)"
    ]
    assert verdict.to_dict()["skipped"] == verdict.skipped


def test_nothing_is_skipped_when_every_side_has_enough_items() -> None:
    verdict = judge(
        _window(200, n_audio=200, shift=0.0, seed=0),
        _window(100, n_audio=100, shift=0.0, seed=1),
        DriftConfig(min_window=50),
    )
    assert verdict.skipped == []
    assert {"embedding:text", "embedding:audio"} <= {r.name for r in verdict.results}


def test_too_few_reference_predictions_and_a_modality_missing_now_are_reported() -> None:
    reference = _window(200, n_audio=200, shift=0.0, seed=0, n_predicted=30)
    current = _window(100, n_audio=0, shift=0.0, seed=1)  # no voice notes in this window
    verdict = judge(reference, current, DriftConfig(min_window=50))
    assert verdict.skipped == [
        "embedding:audio not checked: 200 reference and 0 current items (each side needs 50)",
        "prediction:sentiment not checked: 30 reference and 100 current items (each side needs 50)",
    ]
    assert {r.name for r in verdict.results} >= {"embedding:text"}


def test_a_window_without_predictions_is_reported_and_still_rendered() -> None:
    # Served windows of `embed` requests only carry no predicted classes at all.
    reference = _window(200, n_audio=200, shift=0.0, seed=0)
    current = _window(100, n_audio=100, shift=0.0, seed=1, n_predicted=0)
    assert "pred_sentiment" not in current.frame
    config = DriftConfig(min_window=50)
    verdict = judge(reference, current, config)
    assert verdict.skipped == [
        "prediction:sentiment not checked: 200 reference and 0 current items (each side needs 50)"
    ]
    report = evidently_report(verdict, config).dict()
    assert report["metrics"]  # raw fields and embeddings, no prediction column


def test_drift_in_a_few_dims_of_one_modality_is_in_the_verdict() -> None:
    # Only the voice notes moved, in 4 of 64 dims: the audio check says so, text does not.
    for seed in (0, 1, 2):
        reference = _window(400, n_audio=400, shift=0.0, seed=seed)
        current = _window(400, n_audio=400, shift=0.0, seed=seed + 10, audio_shift_dims=4)
        verdict = judge(reference, current, DriftConfig(min_window=50, seed=seed))
        drifted = {r.name for r in verdict.results if r.drifted}
        assert "embedding:audio" in drifted, verdict.to_dict()
        assert "embedding:text" not in drifted, verdict.to_dict()
        assert verdict.drifted
        assert any(reason.startswith("embedding:audio drifted") for reason in verdict.reasons)
