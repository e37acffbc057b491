"""Serving against a real TorchServe started by the test: endpoints, bad input,
deploy, rollback, restart and restore (through the serving-backend interface, with the
deployment record in object storage), and equality with the in-process model."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore
from serving.backend import get_backend
from serving.client import TorchServeBackend
from serving.deploy import DeployError, deploy, load_record, restore, rollback
from serving.protocol import parse_request
from serving.runtime import InferenceRuntime
from synthetic.traffic import good_probes, hostile_probes, judge
from tests.conftest import make_settings
from tests.integration.serving_helpers import b64_png, b64_wav, random_catalogue, tiny_archive

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("serving")
    # A 1 MiB body limit: the mixed-load test sends a body over it (TorchServe takes 2 MiB).
    # A served-request log of 4 rows, one S3 attempt: the drop-counting test fills it.
    settings = make_settings(
        tmp / "home", serving_max_request_mb=1, served_log_max_rows=4, s3_max_attempts=1
    )
    # Object storage too: it holds the deployment record.
    stack = Stack(settings, only=["s3", "torchserve"])
    stack.up()
    v1, v1_dir = tiny_archive(tmp, settings, "1", seed=1)
    v2, v2_dir = tiny_archive(tmp, settings, "2", seed=2)
    try:
        yield {
            "settings": settings,
            "stack": stack,
            "client": get_backend(settings),
            "archives": {"1": v1, "2": v2},
            "dirs": {"1": v1_dir, "2": v2_dir},
            "tmp": tmp,
        }
    finally:
        stack.down()


def test_deploy_serves_every_endpoint_and_matches_in_process(served: dict) -> None:
    settings: Settings = served["settings"]
    result = deploy(served["archives"]["1"], "1", settings)
    assert result["status"] == "deployed"
    client: TorchServeBackend = served["client"]
    assert sorted(client.models()) == ["embed", "insights", "search"]

    runtime = InferenceRuntime.from_folder(_unpacked(served, "1"), "1", settings=settings)
    catalogue = runtime.catalogue_targets()
    bodies = {
        "embed": [{"text": "the mug arrived cracked"}, {"image": b64_png()}, {"audio": b64_wav()}],
        "insights": [
            {"text": "lovely lamp", "image": b64_png(), "audio": b64_wav()},
            {"audio": b64_wav(pitch=330.0)},
        ],
        "search": [{"query": {"image": b64_png()}, "target": "text", "k": 4}],
    }
    try:
        for task, task_bodies in bodies.items():
            for body in task_bodies:
                response = client.predict(task, body)
                assert response.status_code == 200, response.text
                served_answer = response.json()
                request = parse_request(
                    task, {"body": body}, runtime.media, catalogue, runtime.bounds
                )
                local = runtime.answer(task, [request])[0]
                local.pop("_embeddings", None)
                _assert_close(served_answer, local)
    finally:
        runtime.close()  # its catalogue thread must not outlive the test's object store


def _unpacked(served: dict, version: str) -> Path:
    """The archive's contents as TorchServe sees them (a .mar is a zip)."""
    import zipfile

    out = served["tmp"] / f"unpacked-{version}"
    if not out.exists():
        zipfile.ZipFile(served["archives"][version]).extractall(out)
    return out


def _assert_close(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float):
        assert abs(a - b) < 1e-4
    else:
        assert a == b


@pytest.mark.parametrize(
    ("task", "body", "status", "field"),
    [
        ("embed", {"txt": "typo"}, 400, "txt"),
        ("embed", {"text": ""}, 400, "text"),
        ("embed", {"image": base64.b64encode(b"not an image at all").decode()}, 400, "image"),
        ("embed", {"audio": base64.b64encode(b"RIFFxxxxWAVEnot audio").decode()}, 400, "audio"),
        ("embed", {"image": "%%%"}, 400, "image"),
        ("search", {"query": {"text": "x"}, "target": "smell"}, 400, "target"),
        ("insights", {}, 400, None),
        ("embed", {"text": "x" * 6000}, 400, "text"),  # text_too_long, as ingestion says
    ],
)
def test_bad_input_gets_4xx_json_and_the_worker_keeps_running(
    served: dict, task: str, body: dict, status: int, field: str | None
) -> None:
    client: TorchServeBackend = served["client"]
    if client.default_version("embed") is None:
        deploy(served["archives"]["1"], "1", served["settings"])
    pids_before = _worker_pids(client, task)
    response = client.predict(task, body)
    assert response.status_code == status
    assert response.json()["field"] == field
    assert client.predict("embed", {"text": "still serving"}).status_code == 200
    assert _worker_pids(client, task) == pids_before


def test_not_json_and_no_token(served: dict) -> None:
    client: TorchServeBackend = served["client"]
    if client.default_version("embed") is None:
        deploy(served["archives"]["1"], "1", served["settings"])
    response = client.predict("embed", b"{not json", raw=True)
    assert response.status_code == 400 and response.json()["error"] == "not_json"
    url = f"{served['settings'].torchserve_inference}/predictions/embed"
    assert 400 <= requests.post(url, json={"text": "hi"}, timeout=30).status_code < 500


def _worker_pids(client: TorchServeBackend, task: str, version: str | None = None) -> list[int]:
    return client.worker_pids(task, version)


def test_deploy_rollback_and_restart(served: dict) -> None:
    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    deploy(served["archives"]["1"], "1", settings)
    assert deploy(served["archives"]["1"], "1", settings)["status"] == "already serving"
    result = deploy(served["archives"]["2"], "2", settings)
    assert result["previous"]["embed"] == "1"
    assert all(client.default_version(t) == "2" for t in ("embed", "search", "insights"))
    assert set(client.versions("embed")) == {"1", "2"}
    v2_answer = client.predict("embed", {"text": "which model?"}).json()
    assert v2_answer["model_version"] == "2"
    # The previous version stays registered for rollback, without workers (memory).
    workers = settings.serving_workers
    assert [client.workers("insights", v) for v in ("1", "2")] == [0, workers]

    assert rollback(settings)["version"] == "1"
    assert client.predict("embed", {"text": "which model?"}).json()["model_version"] == "1"
    assert [client.workers("insights", v) for v in ("1", "2")] == [workers, 0]
    recorded = {
        "default": "1",
        "previous": "2",
        "archives": {"1": "customer-feedback-v1.mar", "2": "customer-feedback-v2.mar"},
    }
    assert load_record(settings)["endpoints"]["embed"] == recorded
    # The record is an object in the lake bucket, not a file beside TorchServe.
    uri = settings.serving_record_uri
    assert uri == f"s3://{settings.lake_bucket}/serving/deployments.json"
    assert ObjectStore(settings).exists(uri)
    assert not list(settings.home_dir.glob("torchserve/deployments*"))

    # What was deployed comes back after the stack restarts (`up` runs the restore).
    stack: Stack = served["stack"]
    stack.down()
    said: dict[str, str] = {}
    stack.up(lambda service, message: said.update({service.name: message}))
    assert said["torchserve"] == "started; restored 6 deployment(s)"
    assert client.default_version("embed") == "1"
    assert client.predict("insights", {"text": "back again"}).status_code == 200
    assert [client.workers("insights", v) for v in ("1", "2")] == [workers, 0]


def test_restore_says_what_failed(served: dict) -> None:
    """A registration that fails on restore (its archive is gone from the model store)
    is named in `up`'s report and in restore's summary; the rest is restored."""
    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    deploy(served["archives"]["1"], "1", settings)
    deploy(served["archives"]["2"], "2", settings)  # 2 default, 1 previous
    store = settings.torchserve_model_store
    assert store is not None
    gone = store / "customer-feedback-v1.mar"
    aside = served["tmp"] / "aside-v1.mar"
    torchserve = served["stack"].service("torchserve")
    torchserve.stop()
    gone.rename(aside)
    try:
        said = torchserve.start()
        assert "restored 3 deployment(s), 3 FAILED" in said
        assert "insights v1 (customer-feedback-v1.mar)" in said
        assert client.default_version("insights") == "2"
        assert client.predict("insights", {"text": "v2 still serves"}).status_code == 200
        summary = restore(settings)  # idempotent: what is there stays, what failed fails
        assert summary["status"] == "partial"
        assert sorted(summary["present"]) == ["embed/2", "insights/2", "search/2"]
        failed = {(f["endpoint"], f["version"], f["archive"]) for f in summary["failed"]}
        assert failed == {
            (t, "1", "customer-feedback-v1.mar") for t in ("embed", "search", "insights")
        }
        assert all("HTTP 404" in f["error"] for f in summary["failed"])
        log = torchserve.log_path.read_text(errors="replace")
        assert "restore: embed version 1 from customer-feedback-v1.mar failed" in log
    finally:
        aside.rename(gone)
    summary = restore(settings)
    assert summary["status"] == "restored" and summary["failed"] == []
    assert sorted(summary["restored"]) == ["embed/1", "insights/1", "search/1"]
    assert rollback(settings)["version"] == "1"  # the restored previous version serves


def test_a_failing_version_is_not_made_default(served: dict, tmp_path: Path) -> None:
    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    deploy(served["archives"]["1"], "1", settings)
    before = client.default_version("embed")
    store = settings.torchserve_model_store
    broken = store / "customer-feedback-v9.mar"
    broken.write_bytes(b"this is not a model archive")
    with pytest.raises(DeployError, match="nothing changed"):
        deploy(broken, "9", settings)
    assert client.default_version("embed") == before
    assert client.predict("embed", {"text": "unaffected"}).status_code == 200
    assert "9" not in client.versions("embed")


def test_search_returns_catalogue_items(served: dict) -> None:
    client: TorchServeBackend = served["client"]
    if client.default_version("search") is None:
        deploy(served["archives"]["1"], "1", served["settings"])
    answer = client.predict(
        "search", {"query": {"text": "cracked mug"}, "target": "image", "k": 5}
    ).json()
    scores = [r["score"] for r in answer["results"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    catalogue = random_catalogue(len(client.predict("embed", {"text": "x"}).json()["embedding"]))
    assert {r["id"] for r in answer["results"]} <= set(catalogue.ids["image"])
    assert np.isfinite(scores).all()


def test_the_catalogue_is_loaded_from_object_storage_not_from_the_archive(served: dict) -> None:
    import zipfile

    names = zipfile.ZipFile(served["archives"]["1"]).namelist()
    assert not [n for n in names if n.startswith("catalogue")]
    info = json.loads(zipfile.ZipFile(served["archives"]["1"]).read("archive.json"))
    assert info["search_uri"].endswith("/search/customer-feedback/v1")
    store = ObjectStore(served["settings"])
    assert store.is_committed(info["search_uri"])
    assert store.committed_manifest(info["search_uri"])["metadata"]["targets"]["fused"]["exact"]


def test_a_live_catalogue_adds_a_new_batch_in_the_background(served: dict) -> None:
    """A batch published after load is searchable without any search call to trigger it
    (a background thread looks every search_refresh_s)."""
    import time

    from serving.catalogue import Catalogue, CatalogueItem
    from serving.runtime import LiveCatalogue
    from serving.search_store import batch_prefix, publish_catalogue, search_prefix

    settings = served["settings"].model_copy(update={"search_refresh_s": 0.2})
    store = ObjectStore(settings)
    # A prefix of its own: the TorchServe of this module watches v1's catalogue.
    prefix = search_prefix(settings, "live-catalogue-test", "1")
    publish_catalogue(store, random_catalogue(16, n=30), prefix)
    uri = str(prefix)
    live = LiveCatalogue(settings, uri)
    try:
        assert len(live.catalogue.ids["text"]) == 30 and live.batches == set()
        rng = np.random.default_rng(5)
        vectors = {t: rng.normal(size=(4, 16)).astype(np.float32) for t in live.catalogue.ids}
        vectors = {t: v / np.linalg.norm(v, axis=1, keepdims=True) for t, v in vectors.items()}
        ids = [f"late-{i}" for i in range(4)]
        items = {i: CatalogueItem(text=f"late {i}", batch="batch-late") for i in ids}
        late = Catalogue({t: ids for t in vectors}, vectors, items, "1")
        publish_catalogue(store, late, batch_prefix(uri, "batch-late"))
        deadline = time.monotonic() + 30
        while "batch-late" not in live.batches and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live.batches == {"batch-late"} and len(live.catalogue.ids["text"]) == 34
        found = live.catalogue.search(
            {"text": vectors["text"][2]}, {"text": 1.0}, "text", 1, {"batch": "batch-late"}
        )
        assert [r["id"] for r in found] == ["late-2"]
    finally:
        live.close()


def test_a_photo_and_words_search_filtered_items_as_computed_in_process(served: dict) -> None:
    """A two-modality query with weights, on the fused target, filtered by a label and a
    time range: the k best matching items by sum_m w_m cos(q_m, item), each with the
    similarities that add up to its score; a filter on an unknown attribute is a 400."""
    client: TorchServeBackend = served["client"]
    if client.default_version("search") is None:
        deploy(served["archives"]["1"], "1", served["settings"])
    photo = b64_png()
    words = "cracked mug"
    query = {"text": words, "image": photo}
    weights = {"text": 0.25, "image": 0.75}
    flt = {"damaged": True, "created_at": {"from": "2026-11-02T00:00:00Z"}}
    body = {"query": query, "weights": weights, "target": "fused", "k": 7, "filter": flt}
    answer = client.predict("search", body).json()
    assert answer["query_modalities"] == ["text", "image"] and answer["target"] == "fused"

    # In process: the served model's own embeddings of each query modality.
    q = {
        m: np.asarray(client.predict("embed", {m: v}).json()["embedding"]) for m, v in query.items()
    }
    catalogue = random_catalogue(len(q["text"]))
    matching = [
        n for n, i in enumerate(catalogue.ids["fused"])
        if catalogue.items[i].labels["damaged"] == "true"
        and catalogue.items[i].created_at >= "2026-11-02T00:00:00Z"
    ]  # fmt: skip
    vectors = catalogue.vectors["fused"]
    expected = {
        catalogue.ids["fused"][n]: 0.25 * vectors[n] @ q["text"] + 0.75 * vectors[n] @ q["image"]
        for n in matching
    }
    best = sorted(expected, key=expected.get, reverse=True)[:7]
    assert len(matching) >= 7
    assert [r["id"] for r in answer["results"]] == best
    for r in answer["results"]:
        assert r["score"] == pytest.approx(expected[r["id"]], abs=1e-4)
        parts = sum(r["weights"][m] * r["similarities"][m] for m in query)
        assert parts == pytest.approx(r["score"], abs=1e-5)  # the explanation adds up
        assert r["labels"]["damaged"] == "true" and r["created_at"] >= "2026-11-02"

    # Only 5 items are damaged in the first batch: k=10 returns those 5, not fewer.
    first = {"query": {"text": words}, "target": "text", "k": 10,
             "filter": {"damaged": True, "batch": "batch-0000"}}  # fmt: skip
    found = client.predict("search", first).json()["results"]
    assert sorted(r["id"] for r in found) == [f"item-{n:03d}" for n in range(1, 10, 2)]

    bad = client.predict("search", {"query": {"text": words}, "filter": {"colour": "red"}})
    assert bad.status_code == 400 and bad.json()["field"] == "filter"
    assert "unknown attribute 'colour'" in bad.json()["message"]
    assert client.predict("search", body).json() == answer  # the server keeps its answers


def _send(client: TorchServeBackend, probe: object) -> tuple[int, object]:
    response = client.predict(probe.task, probe.body, raw=True)  # type: ignore[attr-defined]
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def test_hostile_requests_do_not_change_honest_answers_under_batching(served: dict) -> None:
    """Good and hostile requests interleaved at concurrency 16 (TorchServe batches up to 8):
    every good answer equals its answer alone, every bad one is its own 4xx naming the
    problem, and no worker restarts."""
    from concurrent.futures import ThreadPoolExecutor

    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    if client.default_version("embed") is None:
        deploy(served["archives"]["1"], "1", settings)
    good = good_probes()
    alone = {}
    for probe in good:
        status, answer = _send(client, probe)
        assert status == 200, (probe.name, answer)
        alone[probe.name] = answer
    pids = {task: sorted(_worker_pids(client, task)) for task in ("embed", "search", "insights")}
    hostile = hostile_probes(settings.serving_max_request_bytes)
    mix = [p for _ in range(4) for pair in zip(good, hostile[: len(good)], strict=False)
           for p in pair] + hostile  # fmt: skip
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: _send(client, p), mix))
    wrong = [
        judge(probe, status, answer, alone.get(probe.name))
        for probe, (status, answer) in zip(mix, answers, strict=True)
    ]
    assert [w for w in wrong if w] == []
    assert sum(p.good for p in mix) >= 24 and sum(not p.good for p in mix) >= 24
    after = {task: sorted(_worker_pids(client, task)) for task in ("embed", "search", "insights")}
    assert after == pids


def test_a_body_over_the_frontend_limit_is_refused_before_any_worker(served: dict) -> None:
    """Over twice the body limit TorchServe's frontend answers 413 itself (no body: it is
    not ours to shape); between the limit and twice it, the worker's JSON 413 names it."""
    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    if client.default_version("embed") is None:
        deploy(served["archives"]["1"], "1", settings)
    limit = settings.serving_max_request_bytes
    near = b'{"text": "' + b"a" * (limit + 10) + b'"}'
    response = client.predict("embed", near, raw=True)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    assert f"at most {limit}" in response.json()["message"]
    far = b'{"text": "' + b"a" * (2 * limit + 10) + b'"}'
    assert client.predict("embed", far, raw=True).status_code == 413
    assert client.predict("embed", {"text": "still serving"}).status_code == 200


def test_rows_the_served_log_cannot_keep_are_counted_in_torchserve_metrics(served: dict) -> None:
    """Object storage down: serving goes on, and the rows its log had to drop are counted
    in TorchServe's metrics (model_metrics.log), not lost silently."""
    import re
    import time

    from dualmedia.stack.torchserve import TorchServeService

    settings: Settings = served["settings"]
    client: TorchServeBackend = served["client"]
    if client.default_version("embed") is None:
        deploy(served["archives"]["1"], "1", settings)
    metrics = TorchServeService(settings).state_dir / "logs" / "model_metrics.log"
    s3 = Stack(settings, only=["s3"])
    s3.down()
    try:
        for i in range(40):
            response = client.predict("embed", {"text": f"said while storage is down {i}"})
            assert response.status_code == 200
        dropped = 0.0
        deadline = time.monotonic() + 60
        while dropped == 0 and time.monotonic() < deadline:
            time.sleep(1)
            text = metrics.read_text(errors="replace") if metrics.exists() else ""
            counts = re.findall(r"ServedRowsDropped\.Count:([0-9.]+)\|#ModelName:embed", text)
            dropped = sum(float(c) for c in counts)
        # 40 rows, at most 4 buffered per worker: most were dropped, and counted.
        assert dropped >= 40 - 4 * settings.serving_workers, text[-2000:]
    finally:
        s3.up()
