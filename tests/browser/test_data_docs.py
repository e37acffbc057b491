"""A snapshot's Great Expectations Data Docs, opened in Chromium with the network cut off.

GX's pages load Bootstrap, bootstrap-table, jQuery and Vega from CDNs; the site ingestion
writes carries pinned copies of them (ingestion/data_docs.py), so with every non-file
request refused the index lists the batch and the batch's page shows its expectations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from dualmedia.datasets import upload_dataset
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from ingestion import data_docs
from ingestion.pipeline import ingest
from synthetic import generate_dataset

pytestmark = pytest.mark.integration


def test_data_docs_show_the_validation_with_no_network(
    s3_settings: Settings, page: Page, artifacts: Path, tmp_path: Path
) -> None:
    if not data_docs.installed():
        pytest.fail(
            f"the Data Docs assets are not installed: run `make install` ({data_docs.ASSETS})"
        )
    generate_dataset(tmp_path / "ds", 60, seed=12)
    uri = f"s3://{s3_settings.raw_bucket}/docs-offline"
    upload_dataset(tmp_path / "ds", uri, ObjectStore(s3_settings))
    summary = ingest(uri, s3_settings, docs_dir=tmp_path / "docs")
    index = Path(summary["data_docs_local"])

    refused: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.context.route("**/*", offline)
    page.goto(index.as_uri())
    # bootstrap-table (a bundled script) builds the list of validation results.
    row = page.locator("table tbody tr").filter(has_text="batch-0001").first
    expect(row).to_be_visible()
    page.screenshot(path=artifacts / "data-docs-index-offline.png", full_page=True)
    expect(page.get_by_text("Showing 1 to 1 of 1 rows").first).to_be_visible()  # its pager
    row.get_by_text("records-batch-0001").click()  # the row opens the validation result
    page.wait_for_url("**/validations/**")
    expect(page.get_by_text("Evaluated Expectations").first).to_be_visible()
    expect(page.get_by_text("is a required field").first).to_be_visible()
    page.screenshot(path=artifacts / "data-docs-validation-offline.png", full_page=True)
    assert not [u for u in refused if not u.startswith("https://greatexpectations.io")], refused
