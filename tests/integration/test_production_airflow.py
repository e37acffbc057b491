"""The production profile on this machine's real PostgreSQL and Redis.

One stack for the module: S3, MLflow on PostgreSQL, TorchServe, and Airflow's api-server,
scheduler, dag-processor, triggerer and two Celery workers (queues default + train), its
metadata DB and result backend in a PostgreSQL database of its own, the broker's keys in
Redis under a key prefix of its own, Feast's registry in PostgreSQL and its online store
in a Redis database of its own; all are dropped / deleted at the end (no FLUSHDB: the
Redis may be shared). The dags folder holds the platform's DAGs and two small test DAGs
(routing, worker loss). The training DAG runs whole on the Celery workers: batches
validated by mapped tasks, training in two DDP processes (configs/train/tiny-ddp.yaml).
The worker-loss test runs last: it leaves one worker dead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from dualmedia.airflow_api import AirflowClient
from dualmedia.datasets import upload_dataset
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot
from dualmedia.stack import Stack
from dualmedia.stack import postgres as pg
from dualmedia.storage import ObjectStore, S3Uri
from synthetic import generate_dataset
from tests.conftest import make_settings
from training.checkpoints import RunState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 11  # this module's broker; other production tests use other numbers
FEAST_REDIS_DB = 13  # this module's Feast online store
REPO = Path(__file__).resolve().parents[2]

# Each task records which process ran it and that process's ancestors: the test finds
# among them the pid of the `airflow celery worker` that ran it.
DAGS = """
import json, os, socket, time
from pathlib import Path

import pendulum
import psutil
from airflow.sdk import dag, get_current_context, task

from dualmedia.settings import get_settings

TRAIN_QUEUE = get_settings().airflow_train_queue


def _where(step):
    ctx = get_current_context()
    info = {"step": step, "pid": os.getpid(), "host": socket.gethostname(),
            "ancestors": [p.pid for p in psutil.Process().parents()],
            "try": ctx["ti"].try_number}
    out = Path(ctx["dag_run"].conf["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{step}-{info['try']}.json").write_text(json.dumps(info))
    return info


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def celery_routing():
    @task(queue="default")
    def fetch():
        return _where("fetch")

    @task(queue=TRAIN_QUEUE)
    def train(_):
        return _where("train")

    train(fetch())


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False,
     default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=1)})
def worker_loss():
    @task(queue=TRAIN_QUEUE)
    def long_step():
        info = _where("long_step")
        if info["try"] == 1:
            time.sleep(600)  # the test kills this worker meanwhile
        return info

    long_step()


celery_routing()
worker_loss()
"""


def _services_available() -> str | None:
    for port, what in ((5432, "PostgreSQL"), (6379, "Redis")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{what} is not running on 127.0.0.1:{port} (needed by the production profile)"
    return None


def redis_delete(db: int, pattern: str) -> int:
    """Delete this module's keys (`pattern`: the broker's prefix*, *Feast's project name):
    Redis may be shared, no FLUSHDB."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    keys = list(client.scan_iter(match=pattern))
    return client.delete(*keys) if keys else 0


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Stack, Path]]:
    reason = _services_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("prod-airflow")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    (dags / "celery_test_dags.py").write_text(DAGS)
    suffix = uuid.uuid4().hex[:8]
    s = make_settings(
        root / "home",
        profile="production",
        postgres_url=SecretStr(POSTGRES_URL),
        postgres_airflow_db=f"dm_test_airflow_{suffix}",
        postgres_mlflow_db=f"dm_test_mlflow_{suffix}",
        postgres_feast_db=f"dm_test_feast_{suffix}",
        redis_url=SecretStr(f"redis://127.0.0.1:6379/{REDIS_DB}"),
        redis_key_prefix=f"dmtest_{suffix}:",
        airflow_workers=2,
        airflow_worker_concurrency=1,
        airflow_task_heartbeat_timeout_s=20,
        airflow_password=SecretStr("production-test"),
        airflow_pause_new_dags=True,  # only what a test unpauses runs
        dags_folder=dags,
        feast_redis=SecretStr(f"127.0.0.1:6379,db={FEAST_REDIS_DB}"),
        feast_project=f"dmtest_{suffix}",
    )
    stack = Stack(s)
    try:
        stack.up()
        yield s, stack, root
    finally:
        stack.down()
        for name in pg.platform_databases(s):
            pg.drop_database(s, name)
        redis_delete(REDIS_DB, f"{s.redis_key_prefix}*")
        redis_delete(FEAST_REDIS_DB, f"*{s.feast_project}")


def _wait_for_dags(client: AirflowClient, ids: set[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {d["dag_id"] for d in client.list_dags()}
        if ids <= found:
            return
        time.sleep(2)
    raise AssertionError(f"DAGs {ids} not parsed; import errors: {client.import_errors()}")


def _run(client: AirflowClient, dag_id: str, conf: dict, timeout: float = 300) -> dict:
    client.set_paused(dag_id, False)
    run = client.trigger(dag_id, conf)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.dag_run(dag_id, run["dag_run_id"])["state"]
        if state in ("success", "failed"):
            return client.dag_run(dag_id, run["dag_run_id"])
        time.sleep(2)
    raise AssertionError(f"{dag_id} run {run['dag_run_id']} did not finish in {timeout}s")


def _worker_of(stack: Stack, ran: dict) -> str | None:
    """The name of the Celery worker service whose process is an ancestor of the task."""
    for svc in stack.services:
        proc = svc.process() if svc.name.startswith("airflow-worker-") else None
        if proc is not None and proc.pid in ran["ancestors"]:
            return svc.name
    return None


def _all_task_rows(s: Settings, dag_id: str, run_id: str) -> list[dict]:
    """The run's task instances (a mapped task has one per map index)."""
    keys = ("task_id", "map_index", "state", "executor", "queue", "hostname", "pid", "try_number")
    rows = pg.query(
        s,
        s.postgres_airflow_db,
        f"SELECT {', '.join(keys)} FROM task_instance WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _task_rows(s: Settings, dag_id: str, run_id: str) -> dict[str, dict]:
    """The run's unmapped task instances by task id."""
    return {r["task_id"]: r for r in _all_task_rows(s, dag_id, run_id) if r["map_index"] == -1}


def test_status_reports_the_production_backends(prod: tuple[Settings, Stack, Path]) -> None:
    s, stack, _ = prod
    states = {st.name: st for st in stack.status() if st.name.startswith("airflow")}
    assert {n: st.state for n, st in states.items()} == dict.fromkeys(
        [
            "airflow",
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-triggerer",
            "airflow-worker-1",
            "airflow-worker-2",
        ],
        "running",
    )
    backend = states["airflow"].backend
    assert backend["executor"] == "CeleryExecutor"
    assert str(backend["metadata_db"]).endswith(f"/{s.postgres_airflow_db}")
    assert backend["queues"] == ["default", "train"]
    assert backend["parallelism"] == 2  # 2 workers x 1 slot
    # The schema is in PostgreSQL, migrated by `up`.
    assert pg.query(s, s.postgres_airflow_db, "SELECT count(*) FROM alembic_version")[0][0] == 1
    # Idempotent: a second `up` starts nothing new.
    pids = {st.name: st.pid for st in stack.status()}
    stack.up()
    assert {st.name: st.pid for st in stack.status()} == pids


def test_tasks_run_on_celery_workers_by_queue(prod: tuple[Settings, Stack, Path]) -> None:
    s, stack, root = prod
    client = AirflowClient(s)
    _wait_for_dags(client, {"celery_routing", "worker_loss"})
    out = root / "routing"
    run = _run(client, "celery_routing", {"out": str(out)})
    assert run["state"] == "success"
    rows = _task_rows(s, "celery_routing", run["dag_run_id"])
    scheduler_pid = stack.service("airflow-scheduler").process().pid
    for task_id, queue in (("fetch", "default"), ("train", "train")):
        ti = rows[task_id]
        assert ti["state"] == "success"
        assert ti["executor"] in (None, "CeleryExecutor")  # None: the default executor
        assert ti["queue"] == queue
        assert ti["hostname"]  # the worker's host (one machine here)
        assert ti["pid"] not in (None, scheduler_pid)
        ran = json.loads((out / f"{task_id}-1.json").read_text())
        # The task process descends from one of our Celery workers, not the scheduler.
        assert _worker_of(stack, ran) is not None
        assert ran["pid"] != scheduler_pid and scheduler_pid not in ran["ancestors"]
    # The broker's keys (queues, bindings) are under this stack's prefix.
    import redis

    broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    assert any(True for _ in broker.scan_iter(match=f"{s.redis_key_prefix}*"))


def test_training_dag_runs_on_the_workers_with_mapped_validation_and_ddp(
    prod: tuple[Settings, Stack, Path],
) -> None:
    """The whole training DAG on Celery workers: one mapped validation task per batch,
    training in 2 DDP processes, the model registered in MLflow's PostgreSQL, features in
    Redis, the model deployed. Its evaluation equals one process training the same config."""
    from training.config import named_config
    from training.launch import run_training
    from training.models.scoring import score_arrays
    from training.registry import TAG_SNAPSHOT_URI, load_registered_model, register

    s, stack, root = prod
    client = AirflowClient(s)
    _wait_for_dags(client, {"multimodal_training"})
    folder, uri = root / "dataset", f"s3://{s.raw_bucket}/prod-feedback"
    for i in range(3):
        generate_dataset(folder, 40, seed=6, batch=f"batch-000{i + 1}", start_index=40 * i)
    upload_dataset(folder, uri, ObjectStore(s))
    conf = {"dataset_uri": uri, "train_config": "tiny-ddp"}
    run = _run(client, "multimodal_training", conf, timeout=1200)
    rows = _all_task_rows(s, "multimodal_training", run["dag_run_id"])
    states = {(r["task_id"], r["map_index"]): r["state"] for r in rows}
    assert run["state"] == "success", states

    scheduler_pid = stack.service("airflow-scheduler").process().pid
    mapped = sorted(r["map_index"] for r in rows if r["task_id"] == "validate_batch")
    assert mapped == [0, 1, 2]  # one task per new batch
    for r in rows:
        assert r["state"] in ("success", "skipped"), r
        assert r["executor"] in (None, "CeleryExecutor")  # None: the default executor
        assert r["hostname"] and r["pid"] not in (None, scheduler_pid), r
        train_step = r["task_id"] in ("train_alignment", "train_fusion")
        assert r["queue"] == ("train" if train_step else "default"), r

    trained = client.xcom("multimodal_training", run["dag_run_id"], "train_fusion")
    assert (
        trained["snapshot_id"]
        == client.xcom("multimodal_training", run["dag_run_id"], "snapshot")["snapshot_id"]
    )
    registered = client.xcom("multimodal_training", run["dag_run_id"], "register")
    name, version = registered["registered_model"], registered["version"]
    db = s.postgres_mlflow_db
    assert pg.query(s, db, "SELECT version FROM model_versions WHERE name = %s", (name,)) == [
        (int(version),)
    ]
    aliases = pg.query(s, db, "SELECT alias FROM registered_model_aliases WHERE name = %s", (name,))
    assert ("champion",) in aliases

    # Training ran in 2 processes; one process with the same config computes the same.
    model, tags = load_registered_model(name, version, s)
    config = named_config("tiny-ddp")
    single = config.model_copy(
        update={"hardware": config.hardware.model_copy(update={"devices": 1, "strategy": "auto"})}
    )
    reference = run_training(tags[TAG_SNAPSHOT_URI], single, s, progress=False)
    assert {st["world_size"] for st in reference["stages"].values()} == {1}
    ref_version = register(reference, s, name="ddp-reference")["version"]
    ref_model, _ = load_registered_model("ddp-reference", ref_version, s)
    test = Snapshot(ObjectStore(s), tags[TAG_SNAPSHOT_URI]).arrays("test")
    ours, theirs = score_arrays(model, test), score_arrays(ref_model, test)
    for modality in model.modalities:
        np.testing.assert_allclose(
            ours.embeddings[modality], theirs.embeddings[modality], atol=2e-3
        )
    metrics = trained["metrics"]
    assert metrics.keys() == reference["metrics"].keys()
    assert max(abs(metrics[k] - reference["metrics"][k]) for k in metrics) <= 0.1
    state = RunState.load(ObjectStore(s), S3Uri.parse(trained["checkpoint_uri"]))
    assert state is not None
    assert {st["world_size"] for st in state.stage_results.values()} == {2}


def test_killed_worker_costs_a_retry_on_the_other(prod: tuple[Settings, Stack, Path]) -> None:
    s, stack, root = prod
    client = AirflowClient(s)
    _wait_for_dags(client, {"worker_loss"})
    out = root / "loss"
    client.set_paused("worker_loss", False)
    run = client.trigger("worker_loss", {"out": str(out)})
    first = out / "long_step-1.json"
    deadline = time.monotonic() + 180
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert first.exists(), "the first try never started"
    victim = _worker_of(stack, json.loads(first.read_text()))
    assert victim is not None
    # The whole worker dies at once, as a lost machine would: its process group
    # (worker, pool, task supervisor and task) gets SIGKILL.
    os.killpg(stack.service(victim).process().pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = client.dag_run("worker_loss", run["dag_run_id"])["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)
    assert state == "success"
    second = json.loads((out / "long_step-2.json").read_text())
    survivor = {"airflow-worker-1": "airflow-worker-2", "airflow-worker-2": "airflow-worker-1"}
    assert _worker_of(stack, second) == survivor[victim]
    ti = _task_rows(s, "worker_loss", run["dag_run_id"])["long_step"]
    assert (ti["state"], ti["try_number"], ti["queue"]) == ("success", 2, "train")
    assert stack.service(victim).process() is None
