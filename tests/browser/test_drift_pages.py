"""The drift pages as a user opens them in Chromium: the index with its trend charts, a
report whose first screen is the verdict, and the Evidently UI project's panels.

Three weekly reports are published through `publish_report` (real S3, the real
Evidently workspace) while the audio gate weight falls from 0.45 to 0.12; the pages
are the files a user opens and the `evidently ui` server the README names.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from monitoring.drift import DriftConfig
from monitoring.monitor import publish_report
from monitoring.report import judge
from tests.drift_windows import signal_window

DATASET = "drift-pages"
WEEKS = [("20261110T000000000000Z", 0.45), ("20261117T000000000000Z", 0.3),
         ("20261124T000000000000Z", 0.12)]  # fmt: skip


@pytest.fixture(scope="module")
def published(s3_settings: Settings) -> dict:
    settings = s3_settings
    config = DriftConfig()
    reference = signal_window(300, seed=0)
    summaries = []
    for week, (stamp, gate) in enumerate(WEEKS):
        current = signal_window(200, seed=week + 1, audio_gate=gate)
        verdict = judge(reference, current, config)
        summaries.append(
            publish_report(settings, DATASET, "m", "1", f"week {week}", verdict, config, stamp)
        )
    return {"settings": settings, "summaries": summaries}


def test_the_drift_index_plots_each_check_over_time(
    published: dict, page: Page, artifacts: Path
) -> None:
    index = Path(published["summaries"][-1]["index"]["local"])
    page.goto(index.as_uri())
    gate = page.locator("section[data-group='audio'] figure[data-check='gate:audio']")
    expect(gate).to_be_visible()
    expect(gate.locator("circle.point")).to_have_count(3)
    expect(gate.locator("polyline.threshold")).to_have_count(1)
    box = gate.locator("svg").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50  # drawn, not empty
    expect(page.locator("section[data-group='label sentiment'] figure.trend")).not_to_have_count(0)
    page.screenshot(path=str(artifacts / "drift-index.png"), full_page=True)

    # The newest report is first in the table; its link opens the report.
    page.locator("#reports a", has_text="report").first.click()
    expect(page.locator("#verdict")).to_have_attribute("data-verdict", "drift")


def test_a_report_opens_with_the_verdict_it_was_decided_on(
    published: dict, page: Page, artifacts: Path
) -> None:
    summary = published["summaries"][-1]
    store = ObjectStore(published["settings"])
    stored = json.loads(
        store.read_text(summary["report_uri"].replace("report.html", "verdict.json"))
    )
    local = Path(summary["index"]["local"]).parent / "reports" / summary["time"] / "report.html"
    page.goto(local.as_uri())
    verdict = page.locator("#dualmedia-verdict")
    expect(verdict).to_be_in_viewport()  # the first screen
    expect(page.locator("#verdict")).to_have_text(f"Verdict: {stored['verdict']}")
    expect(page.locator("#reasons li")).to_have_text(stored["reasons"])
    rows = page.locator("#checks tr[data-check]")
    expect(rows).to_have_count(len(stored["scores"]))
    shown = {
        rows.nth(i).get_attribute("data-check"): float(rows.nth(i).get_attribute("data-score"))
        for i in range(rows.count())
    }
    assert shown == pytest.approx(stored["scores"], abs=1e-4)
    gate_row = page.locator("#checks tr[data-check='gate:audio']")
    expect(gate_row).to_contain_text("drifted")
    # Evidently's own sections follow, rendered by its script (no network here).
    expect(page.get_by_text("Domain classifier ROC AUC: audio embeddings").first).to_be_visible()
    expect(page.get_by_text("Dataset Drift is NOT detected")).to_have_count(0)
    page.screenshot(path=str(artifacts / "drift-report.png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def evidently_ui(published: dict) -> Iterator[str]:
    """`evidently ui` over the workspace the reports went to, as the README runs it."""
    workspace = published["summaries"][-1]["workspace"]
    port = _free_port()
    evidently = Path(sys.executable).with_name("evidently")
    process = subprocess.Popen(
        [str(evidently), "ui", "--workspace", workspace, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/projects", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("evidently ui did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_evidently_ui_project_has_a_panel_per_check(
    published: dict, evidently_ui: str, page: Page, artifacts: Path
) -> None:
    projects = json.loads(urllib.request.urlopen(f"{evidently_ui}/api/projects").read())
    project = next(p for p in projects if p["name"] == DATASET)
    query = {
        "series_filter": [
            {
                "metric": "evidently:metric_v2:ModalitySignalShift",
                "metric_labels": {"check": "gate:audio"},
                "tags": [],
                "metadata": {},
            }
        ]
    }
    request = urllib.request.Request(
        f"{evidently_ui}/api/v2/snapshots/{project['id']}/data_series_batch",
        data=json.dumps(query).encode(),
        headers={"content-type": "application/json"},
    )
    series = json.loads(urllib.request.urlopen(request).read())
    # One series over the three reports, with the scores the verdicts had.
    values = [v for s in series["series"] for v in s["values"] if v is not None]
    assert len(series["series"]) == 1, series
    expected = [s["scores"]["gate:audio"] for s in published["summaries"]]
    assert values == pytest.approx(expected, abs=1e-4)

    page.goto(f"{evidently_ui}/projects/{project['id']}")
    for check in ("gate:audio", "alignment:text/audio", "embedding:audio",
                  "prediction:sentiment", "disagreement:sentiment"):  # fmt: skip
        expect(page.get_by_text(check, exact=True)).to_have_count(1)
    expect(page.get_by_text("gate:audio", exact=True)).to_be_visible()
    page.screenshot(path=str(artifacts / "evidently-ui-project.png"), full_page=True)
