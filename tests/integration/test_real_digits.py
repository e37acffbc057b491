"""Real data through the real ingestion: scikit-learn's 1,797 handwritten 8 x 8 scans, as
benchmarks/real_data.py writes them in the contract (captions on half the items, the
manifest's own split), are all accepted by the default bounds and land in the split the
manifest names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dualmedia.datasets import upload_dataset
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot
from dualmedia.storage import ObjectStore
from ingestion.pipeline import ingest

pytestmark = pytest.mark.integration
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "real_data.py"


def real_data_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_real_data", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_real_scan_is_accepted_into_the_manifests_split(
    s3_settings: Settings, tmp_path: Path
) -> None:
    bench = real_data_module()
    images, target, split = bench.digits_split(None)
    assert images.shape == (1797, 8, 8) and len(set(target)) == 10
    bench.write_dataset(tmp_path / "digits", images, target, split, caption_rate=0.5)
    uri = f"s3://{s3_settings.raw_bucket}/real-digits"
    upload_dataset(tmp_path / "digits", uri, ObjectStore(s3_settings))
    summary = ingest(uri, s3_settings)
    assert summary["accepted"] == 1797 and summary["quarantined"] == 0, summary
    snapshot = Snapshot(ObjectStore(s3_settings), summary["snapshot_uri"])
    assert snapshot.spec.prompt_templates[1] == "a handwritten {cls}"
    for name in ("train", "val", "test"):
        arrays = snapshot.arrays(name)
        assert len(arrays) == int((split == name).sum())
        # Every scan is there, as a model input; about half the items carry a caption.
        assert arrays.present["image"].all()
        assert 0.3 < arrays.present["text"].mean() < 0.7
    # The manifest's split is kept (not re-drawn from the ids): the classes stay stratified.
    test = snapshot.arrays("test")
    assert np.bincount(test.labels["digit"], minlength=10).min() >= 25
