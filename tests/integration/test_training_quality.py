"""What the default configuration learns on the synthetic data (3000 items, trained once from
an s3:// snapshot): fusion beats every single modality on the labels that need more than one
(mismatch: words vs voice; damaged: the photo, sometimes the words, the mood), and the aligned
space finds the same item across every pair of modalities far above chance (photo, words and
voice share the product and its colour).

3000 items, not the demo's 600: with ~420 training items the from-scratch audio encoder
memorises its clips instead of learning the spoken words, and same-item retrieval with audio
stays near chance (measured: text->audio 1-2x chance at 600 items, 14x at 3000).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore
from synthetic.fixtures import synthetic_snapshot
from tests.conftest import make_settings
from training.config import REPO_CONFIGS, load_train_config
from training.train import train

# Training 3000 items takes ~12 min on 2 cores, more than the suite's 15 min per test would
# leave room for on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]
MODALITIES = ("text", "image", "audio")
ITEMS = 3000


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = make_settings(tmp_path_factory.mktemp("quality-stack"))
    stack = Stack(settings, only=["s3", "mlflow"])
    stack.up()
    try:
        store = ObjectStore(settings)
        snapshot = synthetic_snapshot(
            store, settings.lake_bucket, tmp_path_factory.mktemp("quality-data"), ITEMS, seed=0
        )
        summary = train(
            snapshot, load_train_config(REPO_CONFIGS / "default.yaml"), settings, progress=False
        )
        print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=1))
        print(json.dumps(summary["metrics"], indent=1))
        yield summary["metrics"]
    finally:
        stack.down()


def test_fusion_beats_each_single_modality_on_mismatch_and_damaged(
    metrics: dict[str, Any],
) -> None:
    # Each comparison is on the items that have the modality (fused with everything they
    # have vs that modality alone).
    for label in ("mismatch", "damaged"):
        for modality in MODALITIES:
            fused = metrics[f"test/ablation/with_{modality}/{label}/macro_f1"]
            alone = metrics[f"test/ablation/only_{modality}/{label}/macro_f1"]
            assert fused > alone, (label, modality, fused, alone)
            assert metrics[f"test/gain/{label}/over_only_{modality}"] > 0
    # Sentiment is in the words and the voice, the category in the photo, the voice and some
    # words: fusion is at least as good as the best single modality there too (small
    # tolerance: the test split has about 450 items).
    for label in ("sentiment", "category"):
        for m in MODALITIES:
            fused = metrics[f"test/ablation/with_{m}/{label}/macro_f1"]
            alone = metrics[f"test/ablation/only_{m}/{label}/macro_f1"]
            assert fused > alone - 0.05, (label, m, fused, alone)


def test_same_item_retrieval_is_far_above_chance_for_every_pair(
    metrics: dict[str, Any],
) -> None:
    for query in MODALITIES:
        for target in MODALITIES:
            if query == target:
                continue
            key = f"test/retrieval/{query}_to_{target}"
            recall, chance = metrics[f"{key}/R_at_1"], metrics[f"{key}/chance_R_at_1"]
            print(f"{key}: R@1 {recall:.3f}, chance {chance:.3f} ({recall / chance:.1f}x)")
            # Measured 7-22x chance (audio->image lowest); chance is ~1/450 here.
            assert recall >= 5 * chance, (key, recall, chance)
