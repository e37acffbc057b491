"""What fusion buys on the synthetic demo data: the default configuration, trained on 600
items from an s3:// snapshot, beats every single modality on the labels that need more
than one (mismatch: words vs voice; damaged: the photo, sometimes the words, the mood)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore
from tests.conftest import make_settings
from training.config import REPO_CONFIGS, load_train_config
from training.testing import synthetic_snapshot
from training.train import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODALITIES = ("text", "image", "audio")


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("quality-stack"))
    stack = Stack(settings, only=["s3", "mlflow"])
    stack.up()
    yield settings
    stack.down()


def test_fusion_beats_each_single_modality_on_mismatch_and_damaged(
    stack_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(stack_settings)
    snapshot = synthetic_snapshot(store, stack_settings.lake_bucket, tmp_path, 600, seed=0)
    summary = train(
        snapshot, load_train_config(REPO_CONFIGS / "default.yaml"), stack_settings, progress=False
    )
    metrics = summary["metrics"]
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=1))
    print(json.dumps(metrics, indent=1))
    for label in ("mismatch", "damaged"):
        fused = metrics[f"test/fusion/{label}/macro_f1"]
        for modality in MODALITIES:
            alone = metrics[f"test/ablation/only_{modality}/{label}/macro_f1"]
            assert fused > alone, (label, modality, fused, alone)
            assert metrics[f"test/gain/{label}/over_only_{modality}"] > 0
    # Sentiment is in the words and the voice, the category in the photo and some words:
    # fusion is at least as good as the best single modality there too (small tolerance:
    # the test split has about 90 items).
    for label in ("sentiment", "category"):
        fused = metrics[f"test/fusion/{label}/macro_f1"]
        best = max(metrics[f"test/ablation/only_{m}/{label}/macro_f1"] for m in MODALITIES)
        assert fused > best - 0.05, (label, fused, best)
