"""Data Docs carry their own scripts and styles: no page links a CDN, every local link
resolves (ingestion/data_docs.py). The browser test opens them with the network cut."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from ingestion import data_docs
from ingestion.expectations import Validator


def test_every_page_asset_is_a_file_of_the_site(tmp_path: Path) -> None:
    if not data_docs.installed():
        pytest.fail(f"the Data Docs assets are not installed: `make install` ({data_docs.ASSETS})")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    validator = Validator(tmp_path / "site")
    suite = validator.context.suites.add(gx.ExpectationSuite(name="records-b1"))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="id"))
    asset = validator.datasource.add_dataframe_asset(name="b1")
    definition = validator.context.validation_definitions.add(
        gx.ValidationDefinition(
            name="v", data=asset.add_batch_definition_whole_dataframe(name="all"), suite=suite
        )
    )
    definition.run(batch_parameters={"dataframe": pd.DataFrame({"id": ["a", "b"]})})
    index = validator.index()

    pages = list(index.parent.rglob("*.html"))
    assert len(pages) >= 3  # index, suite, validation result
    for page in pages:
        text = page.read_text(encoding="utf-8")
        links = re.findall(r"""(?:src|href)=["']([^"'#]+)["']""", text)
        remote = [u for u in links if u.startswith(("http://", "https://", "//"))]
        assert all(u.startswith("https://greatexpectations.io") for u in remote), remote
        # What bundle() wrote resolves. (GX's own favicon link on validation pages is one
        # folder short, in GX's template: not ours to fix.)
        ours = [u for u in links if "static/vendor/" in u or u.endswith("logo-long.png")]
        assert len(ours) >= 10, page
        for link in ours:
            assert (page.parent / link).resolve().is_file(), (page, link)
    vendored = index.parent / "static" / "vendor"
    assert (vendored / "jquery" / "dist" / "jquery.min.js").is_file()
    assert any((vendored / "@fortawesome" / "fontawesome-free" / "webfonts").glob("*.woff2"))
