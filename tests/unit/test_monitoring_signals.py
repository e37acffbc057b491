"""Modality-aware checks, one truth per report, and the trends on the drift index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitoring.drift import DriftConfig
from monitoring.evidently_metrics import check_of
from monitoring.index_page import check_groups, index_page
from monitoring.report import judge
from monitoring.report_page import evidently_report, write_report
from tests.drift_windows import signal_window


def test_a_fallen_gate_weight_and_a_lost_alignment_are_the_reasons_for_retraining() -> None:
    reference = signal_window(300, seed=0)
    current = signal_window(300, seed=1, audio_gate=0.12, alignment=0.3)
    verdict = judge(reference, current, DriftConfig())
    drifted = {r.name for r in verdict.results if r.drifted}
    assert {"gate:audio", "gate:text", "alignment:text/audio"} <= drifted
    assert "disagreement:sentiment" not in drifted and "missing:audio" not in drifted
    assert verdict.drifted
    gate = next(r for r in verdict.results if r.name == "gate:audio")
    assert gate.reference == pytest.approx(0.45, abs=0.02)
    assert gate.current == pytest.approx(0.12, abs=0.02)
    assert any(
        re.fullmatch(r"the audio gate weight fell from 0\.4\d to 0\.1\d", r)
        for r in verdict.reasons
    )
    assert any(r.startswith("text/audio alignment fell from 0.") for r in verdict.reasons)


def test_disagreement_and_missing_modalities_are_rates_of_whole_items() -> None:
    reference = signal_window(300, seed=0, embed_rows=0)
    # Voice notes went missing and modalities contradict each other more; the `embed`
    # requests (one modality each, by design) do not count as items missing one.
    current = signal_window(300, seed=1, disagree_rate=0.3, audio_rate=0.5, embed_rows=300)
    verdict = judge(reference, current, DriftConfig())
    by_name = {r.name: r for r in verdict.results}
    assert by_name["missing:audio"].drifted
    assert by_name["missing:audio"].current == pytest.approx(0.5, abs=0.07)
    assert by_name["missing:text"].current == 0.0  # 300 embed rows of text-only do not count
    assert by_name["disagreement:sentiment"].drifted
    assert any(
        re.fullmatch(r"the share of items without audio rose from 1\d% to [45]\d%", r)
        for r in verdict.reasons
    )


@pytest.mark.parametrize("seed", range(5))
def test_unchanged_signals_in_a_small_window_are_not_drift(seed: int) -> None:
    verdict = judge(
        signal_window(300, seed=seed), signal_window(60, seed=seed + 100), DriftConfig()
    )
    signal_kinds = ("gate:", "alignment:", "disagreement:", "missing:")
    assert not [r.name for r in verdict.results if r.name.startswith(signal_kinds) and r.drifted]


def test_the_report_shows_the_verdicts_scores_on_the_verdicts_rows(tmp_path: Path) -> None:
    config = DriftConfig(embedding_sample=250)  # both windows are sampled, once
    reference, current = signal_window(400, seed=0), signal_window(300, seed=1, audio_gate=0.2)
    verdict = judge(reference, current, config)
    assert (verdict.n_reference, verdict.n_current) == (250, 250)
    scores = verdict.scores()
    report = evidently_report(verdict, config).dict()
    shown = {}
    for metric in report["metrics"]:
        name, _, _ = check_of(metric["config"])
        shown[name] = float(metric["value"])
    assert set(shown) == set(scores)  # every check, and nothing else (no preset headline)
    for name, value in shown.items():
        assert value == pytest.approx(scores[name], abs=1e-4), name

    write_report(verdict, config, {"window": "batch test"}, tmp_path)
    page = (tmp_path / "report.html").read_text()
    body = page[page.index("<body") :]
    assert body.index("id='dualmedia-verdict'") < body.index("<script")  # the verdict opens it
    assert "data-verdict='drift'" in body
    rows = dict(re.findall(r"data-check='([^']+)' data-score='([^']+)'", body))
    assert {k: float(v) for k, v in rows.items()} == pytest.approx(scores, abs=1e-4)
    assert "Dataset Drift" not in page


def test_the_index_plots_every_check_over_time_by_modality_and_label() -> None:
    config = DriftConfig()
    reference = signal_window(300, seed=0)
    entries = []
    for week, gate in enumerate([0.45, 0.35, 0.12]):
        verdict = judge(reference, signal_window(200, seed=week + 1, audio_gate=gate), config)
        entries.append(
            {
                "time": f"2026112{week}T000000Z",
                "verdict": "drift" if verdict.drifted else "no drift",
                "window": f"week {week}",
                "model_version": "1",
                **verdict.to_dict(),
            }
        )
    page = index_page("ds", entries)
    charts = re.findall(r"<section class='group' data-group='([^']+)'>(.*?)</section>", page)
    groups = {
        group: re.findall(r"data-check='([^']+)' data-points='(\d+)'", body)
        for group, body in charts
    }
    assert list(groups)[:2] == ["text", "audio"]  # modalities in registry order, then labels
    assert ("gate:audio", "3") in groups["audio"] and ("embedding:audio", "3") in groups["audio"]
    assert ("alignment:text/audio", "3") in groups["text"] and (
        "alignment:text/audio",
        "3",
    ) in groups["audio"]
    assert ("prediction:sentiment", "3") in groups["label sentiment"]
    assert ("column:text_length", "3") in groups["text"]
    gate_chart = page[page.index("data-check='gate:audio'") :].split("</figure>")[0]
    colours = re.findall(r"<circle class='point'[^>]* fill='(#[0-9a-f]+)'", gate_chart)
    assert colours == ["#27ae60", "#c0392b", "#c0392b"]  # 0.45 ok, 0.35 and 0.12 drifted
    assert "class='threshold'" in gate_chart
    assert page.index("id='trends'") < page.index("id='reports'")
    assert check_groups("column:image_brightness") == ["image"]
