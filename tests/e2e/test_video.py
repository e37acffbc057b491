"""Video end to end, with no code of its own: a generated `[text, video]` dataset in the
documented contract goes through the training DAG (ingest, validate, train, register,
promote, publish, deploy) on the real local stack; TorchServe embeds, searches and
predicts on clips (JSON base64 and multipart), refuses a bad clip with a 4xx and keeps
answering good ones the same; the drift monitor watches the video fields."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dualmedia.datasets import upload_dataset
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore
from serving.client import TorchServeClient
from synthetic import GeneratorKnobs, generate_dataset
from tests.conftest import make_settings
from tests.integration.airflow_helpers import dags_test

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "customer-feedback"  # training registers a dataset's runs under its name
MODALITIES = ["text", "video"]


def upload_clips(
    settings: Settings, uri: str, n: int, seed: int, batch: str, start: int, **knobs: float
) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="dualmedia-clips-"))
    generate_dataset(
        folder,
        n,
        seed=seed,
        batch=batch,
        start_index=start,
        # Every item keeps its clip (and its text): the test split is all clips.
        knobs=GeneratorKnobs(**{"missing_modality_rate": 0.0, **knobs}),
        video_rate=1.0,
        modalities=MODALITIES,
    )
    upload_dataset(folder, uri, ObjectStore(settings))
    return folder / batch


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("video")
    settings = make_settings(tmp / "home", train_config="tiny", airflow_pause_new_dags=True)
    stack = Stack(settings)
    stack.up()
    uri = f"s3://{settings.raw_bucket}/e2e-clips"
    try:
        # 320 items: drift's reference (the held-out val + test splits, ~64) must pass
        # DriftConfig.min_window (50 per side) for the embedding check to run.
        batch_dir = upload_clips(settings, uri, 320, seed=5, batch="batch-0001", start=0)
        result = dags_test(
            tmp / "airflow-test", settings, "multimodal_training", {"dataset_uri": uri}
        )
        (tmp / "dags-test.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        yield {"settings": settings, "uri": uri, "batch_dir": batch_dir}
    finally:
        stack.down()


def clip_of(batch_dir: Path, k: int = 0) -> tuple[str, bytes]:
    records = [json.loads(line) for line in (batch_dir / "manifest.jsonl").read_text().splitlines()]
    record = [r for r in records if r.get("video")][k]
    return record["id"], (batch_dir / record["video"]).read_bytes()


def test_a_text_and_video_dataset_is_trained_registered_and_published(platform: dict) -> None:
    from mlflow import MlflowClient

    from feature_repo.publish import online_features
    from training.models.scoring import score_arrays
    from training.registry import TAG_SNAPSHOT_URI, load_registered_model

    settings: Settings = platform["settings"]
    champion = MlflowClient(tracking_uri=settings.mlflow_uri).get_model_version_by_alias(
        MODEL, "champion"
    )
    model, tags = load_registered_model(MODEL, champion.version, settings)
    assert model.modalities == MODALITIES
    snapshot = Snapshot(ObjectStore(settings), tags[TAG_SNAPSHOT_URI])
    arrays = snapshot.arrays("test")
    assert arrays.present["video"].all()
    scores = score_arrays(model, arrays)
    ids = arrays.ids[:4]
    online = {row["item_id"]: row for row in online_features(settings, ids)}
    for k, item_id in enumerate(ids):
        np.testing.assert_allclose(
            online[item_id]["video_embedding"], scores.embeddings["video"][k], atol=1e-5
        )
        assert online[item_id]["image_embedding"] is None  # not declared: never written


def test_clips_are_embedded_searched_and_predicted_and_a_bad_one_is_a_4xx(
    platform: dict,
) -> None:
    settings: Settings = platform["settings"]
    ts = TorchServeClient(settings)
    item_id, clip = clip_of(platform["batch_dir"])
    body = {"video": base64.b64encode(clip).decode()}
    embedded = ts.predict("embed", body)
    assert embedded.status_code == 200, embedded.text
    vector = embedded.json()["embedding"]
    assert len(vector) == 32  # tiny.yaml's embed_dim

    # The clip finds itself among the catalogue's videos.
    found = ts.predict("search", {"query": body, "target": "video", "k": 3})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["id"] == item_id

    # insights takes the clip as a multipart file.
    url = f"{settings.torchserve_inference}/predictions/insights"
    files = {"video": ("clip.mp4", clip, "video/mp4"), "text": (None, "it arrived fine")}
    answer = ts.session.post(url, files=files, headers=ts._headers("inference"), timeout=60)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["predictions"]) >= {"sentiment", "category"}

    # A cut clip is refused with its reason; the worker lives and answers the same.
    cut = {"video": base64.b64encode(clip[: len(clip) // 3]).decode()}
    refused = ts.predict("embed", cut)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "video_truncated"
    again = ts.predict("embed", body)
    assert again.status_code == 200
    np.testing.assert_allclose(again.json()["embedding"], vector, atol=1e-6)


def test_the_drift_monitor_watches_video_fields_and_embeddings(platform: dict) -> None:
    from monitoring.monitor import run_monitor

    settings: Settings = platform["settings"]
    uri = f"s3://{settings.raw_bucket}/clip-drift"
    upload_clips(settings, uri, 120, seed=8, batch="probe", start=9000, image_shift=0.9)
    summary = run_monitor(settings, MODEL, batch="probe", dataset_uri=uri, trigger=False)
    checks = set(summary["scores"])
    assert "embedding:video" in checks, sorted(checks)
    assert {f"column:video_{c}" for c in ("brightness", "duration_s", "fps", "width")} <= checks
    assert summary["verdict"] == "drift", summary["scores"]
    assert ObjectStore(settings).exists(summary["report_uri"])
