"""End to end on the real local stack: the training DAG under `airflow dags test`
(ingest → ... → deploy), the promotion gate refusing a worse model, drift found for
each drift knob, and a drifted batch starting a retraining run in a running Airflow."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dualmedia.airflow_api import AirflowClient
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
MODEL = "customer-feedback"


def upload_batch(
    settings: Settings, uri: str, n: int, seed: int, batch: str, start: int, **knobs: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(
            Path(tmp), n, seed=seed, batch=batch, start_index=start, knobs=GeneratorKnobs(**knobs)
        )
        upload_dataset(Path(tmp), uri, ObjectStore(settings))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("platform")
    settings = make_settings(tmp / "home", train_config="tiny", airflow_pause_new_dags=True)
    stack = Stack(settings)
    stack.up()
    # Not the training form's default dataset: runs started by an asset event must take
    # their dataset from the event.
    uri = f"s3://{settings.raw_bucket}/e2e-feedback"
    try:
        # 600 items: drift's reference is the held-out val + test splits (20%, ~120), enough for
        # the embedding and prediction checks (DriftConfig.min_window, 50 per side).
        upload_batch(settings, uri, 600, seed=3, batch="batch-0001", start=0)
        result = dags_test(
            tmp / "airflow-test", settings, "multimodal_training", {"dataset_uri": uri}
        )
        (tmp / "dags-test.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        yield {"settings": settings, "uri": uri, "tmp": tmp, "stack": stack}
    finally:
        stack.down()


def test_training_dag_registers_promotes_publishes_and_serves(platform: dict) -> None:
    from mlflow import MlflowClient

    from feature_repo.publish import online_features
    from training.models.scoring import score_arrays
    from training.registry import TAG_SNAPSHOT_URI, load_registered_model

    settings: Settings = platform["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["dualmedia.snapshot_id"]
    assert json.loads(champion.tags["dualmedia.gate"])["promoted"] is True

    # The online store holds exactly what the champion computes.
    model, tags = load_registered_model(MODEL, "1", settings)
    snapshot = Snapshot(ObjectStore(settings), tags[TAG_SNAPSHOT_URI])
    arrays = snapshot.arrays("test")
    scores = score_arrays(model, arrays)
    ids = arrays.ids[:5]
    online = {row["item_id"]: row for row in online_features(settings, ids)}
    for k, item_id in enumerate(ids):
        assert online[item_id]["model_version"] == "1"
        for modality in model.modalities:
            vector = online[item_id][f"{modality}_embedding"]
            if arrays.present[modality][k]:
                np.testing.assert_allclose(vector, scores.embeddings[modality][k], atol=1e-5)
            else:
                assert vector is None

    # Every endpoint answers with the champion.
    ts = TorchServeClient(settings)
    for endpoint, body in {
        "embed": {"text": "the lamp is lovely"},
        "insights": {"text": "broken on arrival"},
        "search": {"query": {"text": "a red mug"}, "target": "image", "k": 3},
    }.items():
        response = ts.predict(endpoint, body)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"


def test_endpoints_record_what_they_served(platform: dict) -> None:
    from monitoring.window import served_window

    settings: Settings = platform["settings"]
    ts = TorchServeClient(settings)
    # Each worker writes its log every 32 items it served (or 30 s), on a background
    # thread: with more than 31 per worker sent, at least one worker writes.
    for i in range(32 * settings.serving_workers + 8):
        assert ts.predict("insights", {"text": f"served item number {i}"}).status_code == 200
    deadline = time.monotonic() + 60
    window = served_window(settings, "customer-feedback")
    while len(window.frame) < 32 and time.monotonic() < deadline:
        time.sleep(1)
        window = served_window(settings, "customer-feedback")
    assert len(window.frame) >= 32
    assert window.frame["has_text"].all() and not window.frame["has_image"].any()
    assert set(window.frame["pred_sentiment"].dropna()) <= {"negative", "neutral", "positive"}
    assert window.embeddings["text"].shape[0] == len(window.frame)
    # The insights answers' gate weights are logged with them, for the monitor's checks.
    insights = window.frame[window.frame["whole_item"]]
    assert len(insights) >= 32 and insights["gate_text"].notna().all()


def test_a_batch_published_after_deploy_is_found_by_search_without_a_redeploy(
    platform: dict,
) -> None:
    from feature_repo.publish import online_features, publish_batch
    from training.registry import champion_version

    settings: Settings = platform["settings"]
    ts = TorchServeClient(settings)
    served_before = ts.predict("embed", {"text": "x"}).json()["model_version"]
    # Its own prefix: the training dataset's batches stay what the later tests expect.
    late_uri = f"s3://{settings.raw_bucket}/e2e-late-feedback"
    upload_batch(settings, late_uri, 12, seed=71, batch="batch-late", start=70_000)
    version = champion_version(MODEL, settings)
    result = publish_batch(MODEL, version, settings, "batch-late", late_uri)
    assert result["items"]["fused"] == 12 and not result["reused"]
    manifest = ObjectStore(settings).read_text(f"{late_uri}/batch-late/manifest.jsonl")
    first = next(r for r in map(json.loads, manifest.splitlines()) if r.get("text"))

    body = {"query": {"text": first["text"]}, "target": "text", "k": 3,
            "filter": {"batch": "batch-late"}}  # fmt: skip
    deadline = time.monotonic() + 60  # workers look every settings.search_refresh_s
    results: list[dict] = []
    while time.monotonic() < deadline:
        answer = ts.predict("search", body)
        results = answer.json().get("results", []) if answer.status_code == 200 else []
        if results:
            break
        time.sleep(1)
    assert results and results[0]["id"] == first["id"]  # its own text finds it first
    assert results[0]["batch"] == "batch-late" and results[0]["text"] == first["text"]
    assert ts.predict("embed", {"text": "x"}).json()["model_version"] == served_before
    # ... and it is in the feature store, as published by the serving version.
    (row,) = online_features(settings, [first["id"]])
    assert row["model_version"] == version and row["text_embedding"] is not None
    assert publish_batch(MODEL, version, settings, "batch-late", late_uri)["reused"]


def test_the_production_profile_serves_features_from_redis(platform: dict) -> None:
    import socket

    from feature_repo.publish import feature_store, online_features, publish

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379 to test the production profile against")
    local: Settings = platform["settings"]
    redis = local.model_copy(
        update={"feast_profile": "production", "feast_project": f"e2e_{int(time.time())}"}
    )
    try:
        publish(MODEL, "1", redis)
        ids = ["fb-000001", "fb-000002", "fb-000003"]
        assert online_features(redis, ids) == online_features(local, ids)
    finally:
        feature_store(redis).teardown()  # removes this project's keys from Redis
        publish(MODEL, "1", local)  # the local repository again


def test_a_worse_model_is_not_promoted_and_the_champion_keeps_serving(platform: dict) -> None:
    from mlflow import MlflowClient

    from serving.deploy import load_record
    from training.config import REPO_CONFIGS, load_train_config
    from training.registry import gate, register
    from training.train import train

    settings: Settings = platform["settings"]
    champion = MlflowClient(tracking_uri=settings.mlflow_uri).get_model_version_by_alias(
        MODEL, "champion"
    )
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    # A learning rate of ~0: the model stays at its random initialisation.
    frozen = {"lr": 1e-12}
    worse = config.model_copy(
        update={
            "alignment": config.alignment.model_copy(update=frozen),
            "fusion": config.fusion.model_copy(update=frozen),
            "run_name": "deliberately-worse",
        }
    )
    summary = train(champion.tags["dualmedia.snapshot_uri"], worse, settings, progress=False)
    registered = register(summary, settings, MODEL)
    decision = gate(MODEL, settings)
    assert decision["promoted"] is False
    assert decision["champion"] == champion.version
    assert "not above" in decision["reason"] or "fell by more" in decision["reason"]
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    tagged = json.loads(
        client.get_model_version(MODEL, registered["version"]).tags["dualmedia.gate"]
    )
    assert tagged["promoted"] is False and tagged["reason"] == decision["reason"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    assert load_record(settings)["endpoints"]["insights"]["default"] == champion.version
    answer = TorchServeClient(settings).predict("insights", {"text": "still the champion?"}).json()
    assert answer["model_version"] == champion.version


def test_rollback_restores_the_previous_champion_everywhere(platform: dict) -> None:
    """A bad promotion happens (forced here); `dualmedia rollback` undoes it in the
    registry, on the endpoints and in the online feature store."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from feature_repo.publish import online_features, publish
    from serving.release import build_release, deploy_release
    from training.registry import CHAMPION, TAG_PREVIOUS

    settings: Settings = platform["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    good = client.get_model_version_by_alias(MODEL, CHAMPION).version
    bad = max(
        (v for v in client.search_model_versions(f"name='{MODEL}'") if v.version != good),
        key=lambda v: int(v.version),
    ).version  # the deliberately worse model of the test above
    client.set_registered_model_alias(MODEL, CHAMPION, bad)
    client.set_model_version_tag(MODEL, bad, TAG_PREVIOUS, good)
    publish(MODEL, bad, settings)
    build_release(MODEL, bad, settings)
    deploy_release(MODEL, bad, settings)
    ts = TorchServeClient(settings)
    assert ts.predict("embed", {"text": "which one?"}).json()["model_version"] == bad

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMEDIA_")}
    env.update(settings.child_env())
    done = subprocess.run(
        [sys.executable, "-m", "dualmedia.cli", "rollback", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["registry"] == {"champion": good, "rolled_back_from": bad}
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == good
    for endpoint in ("embed", "search", "insights"):
        assert ts.default_version(endpoint) == good
    assert online_features(settings, ["fb-000001"])[0]["model_version"] == good


@pytest.mark.parametrize(
    ("knob", "value", "drifted"),
    [
        (None, 0.0, False),
        ("image_shift", 0.8, True),
        ("text_shift", 0.8, True),
        ("audio_noise", 0.8, True),
    ],
)
def test_each_drift_knob_is_detected(
    platform: dict, knob: str | None, value: float, drifted: bool
) -> None:
    from monitoring.monitor import run_monitor

    settings: Settings = platform["settings"]
    uri = f"s3://{settings.raw_bucket}/drift-probe"
    batch = f"probe-{knob or 'none'}"
    upload_batch(
        settings,
        uri,
        150,
        seed=40 + len(batch),
        batch=batch,
        start=50_000 + 1000 * len(batch),
        **({knob: value} if knob else {}),
    )
    summary = run_monitor(settings, MODEL, batch=batch, dataset_uri=uri, trigger=False)
    assert (summary["verdict"] == "drift") is drifted, summary["scores"]
    assert ObjectStore(settings).exists(summary["report_uri"])


def test_a_drifted_batch_starts_retraining_in_airflow(platform: dict) -> None:
    from mlflow import MlflowClient

    from monitoring.monitor import run_monitor

    settings: Settings = platform["settings"]
    airflow = AirflowClient(settings)
    airflow.set_paused("multimodal_training", False)
    upload_batch(
        settings, platform["uri"], 150, seed=9, batch="batch-0002", start=600, image_shift=0.8
    )
    before = {r["dag_run_id"] for r in airflow.dag_runs("multimodal_training")}

    summary = run_monitor(settings, MODEL, batch="batch-0002")
    assert summary["verdict"] == "drift"
    trigger = summary["trigger"]
    assert trigger["triggered"] is True and trigger["via"] == "asset event (REST API)"
    # The request is an event of the retrain asset; the scheduler starts a training run
    # from it (no trigger through the REST API), which takes the dataset from the event.
    run = airflow.run_for_event("multimodal_training", "request_id", trigger["request_id"], 300)
    run_id = run["dag_run_id"]
    assert run_id not in before and run["run_type"] == "asset_triggered"
    (event,) = airflow.upstream_asset_events("multimodal_training", run_id)
    assert event["name"] == "dualmedia-retrain"
    assert event["extra"]["reason"]["report"] == summary["report_uri"]
    assert any("embedding:image" in r for r in event["extra"]["reason"]["drift"])

    # One drift, one run: a second verdict within the cooldown triggers nothing.
    again = run_monitor(settings, MODEL, batch="batch-0002")
    assert again["trigger"]["triggered"] is False and "cooldown" in again["trigger"]["why"]

    # The report is listed on the index page and attached to the champion's run.
    index = Path(summary["index"]["local"]).read_text()
    assert summary["time"] in index and "drift" in index
    assert "data-check='embedding:image'" in index  # its trend chart
    report = Path(summary["index"]["local"]).parent / "reports" / summary["time"] / "report.html"
    assert "data-verdict='drift'" in report.read_text()
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    artifacts = [a.path for a in client.list_artifacts(champion.tags["dualmedia.run_id"], "drift")]
    assert f"drift/{summary['time']}" in artifacts

    # The triggered run retrains on the new snapshot (old + drifted batch) to the end.
    deadline = time.monotonic() + 900
    state = airflow.dag_run("multimodal_training", run_id)["state"]
    while state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(5)
        state = airflow.dag_run("multimodal_training", run_id)["state"]
    tasks = {
        t["task_id"]: t["state"] for t in airflow.task_instances("multimodal_training", run_id)
    }
    assert state == "success", tasks
    versions = client.search_model_versions(f"name='{MODEL}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert json.loads(newest.tags["dualmedia.gate"])  # the gate's verdict is recorded
    snapshot = Snapshot(ObjectStore(settings), newest.tags["dualmedia.snapshot_uri"])
    assert set(snapshot.info.batches) == {"batch-0001", "batch-0002"}
    assert snapshot.info.source_uri == platform["uri"]  # the event's dataset, not the default
    assert (
        airflow.xcom("multimodal_training", run_id, "pull")["run"]["dataset_uri"]
        == (platform["uri"])
    )


def test_a_new_feedback_batch_is_searched_and_starts_training(platform: dict) -> None:
    from training.registry import champion_version

    settings: Settings = platform["settings"]
    airflow = AirflowClient(settings)
    airflow.set_paused("multimodal_training", False)
    upload_batch(settings, platform["uri"], 60, seed=12, batch="batch-0003", start=750)
    before = {r["dag_run_id"] for r in airflow.dag_runs("multimodal_training")}
    airflow.set_paused("feedback_batches", False)
    run = airflow.trigger("feedback_batches", {"dataset_uri": platform["uri"]})
    deadline = time.monotonic() + 300
    while airflow.dag_run("feedback_batches", run["dag_run_id"])["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(3)
    assert airflow.dag_run("feedback_batches", run["dag_run_id"])["state"] == "success"
    # The batch went to search too, scored by the champion, before any retraining.
    published = airflow.xcom("feedback_batches", run["dag_run_id"], "publish_to_search")
    assert published["batch-0003"]["model_version"] == champion_version(MODEL, settings)
    assert 0 < published["batch-0003"]["items"]["fused"] <= 60
    assert ObjectStore(settings).is_committed(published["batch-0003"]["search_uri"])
    started = []
    while not started and time.monotonic() < deadline:
        started = [
            r
            for r in airflow.dag_runs("multimodal_training")
            if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"
        ]
        time.sleep(3)
    assert started, "the feedback asset did not start the training DAG"
    (event,) = airflow.upstream_asset_events("multimodal_training", started[0]["dag_run_id"])
    assert event["extra"]["dataset_uri"] == platform["uri"]
    airflow.set_paused("feedback_batches", True)
    airflow.set_paused("multimodal_training", True)  # the run's result is not needed here
