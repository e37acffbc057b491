"""`dualmedia up | status | down` against the real services, driven through the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from dualmedia.airflow_api import AirflowClient
from dualmedia.settings import Settings
from dualmedia.stack import Stack, StackError
from dualmedia.storage import ObjectStore
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

SMOKE_DAG = """
import pendulum
from airflow.sdk import dag, task

@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def stack_smoke():
    @task
    def hello():
        return "hi"
    hello()

stack_smoke()
"""


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMEDIA_")}
    env.update(settings.child_env())
    return subprocess.run(
        [sys.executable, "-m", "dualmedia.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=check,
    )


def stack_processes(home: Path) -> list[psutil.Process]:
    """Every process whose command line or working directory lies under `home`."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except psutil.Error:
            continue
        if str(home) in text:
            found.append(p)
    return found


def test_full_stack_up_status_down(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "stack_smoke.py").write_text(SMOKE_DAG)
    s = make_settings(tmp_path / "home", dags_folder=dags)
    try:
        started = cli(s, "up", "--json")
        states = {x["service"]: x["state"] for x in json.loads(started.stdout)["services"]}
        assert states == dict.fromkeys(["s3", "mlflow", "airflow", "torchserve"], "running")

        # Idempotent: a second `up` starts nothing and finds all healthy.
        again = cli(s, "up")
        assert again.stderr.count("already running") == 4

        # status --json for scripts.
        status = json.loads(cli(s, "status", "--json").stdout)["services"]
        assert {x["service"]: x["url"] for x in status}["mlflow"] == s.mlflow_uri

        # Object storage through the storage layer.
        store = ObjectStore(s)
        store.ensure_bucket("smoke")
        store.write_bytes("s3://smoke/hello.txt", b"hello stack")
        assert store.read_bytes("s3://smoke/hello.txt") == b"hello stack"

        # MLflow: a run logged through the server, read back, artifact in object storage.
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=s.mlflow_uri)
        exp_id = client.create_experiment("smoke")
        run = client.create_run(exp_id)
        client.log_param(run.info.run_id, "alpha", "0.5")
        client.log_metric(run.info.run_id, "loss", 0.25)
        artifact = tmp_path / "note.txt"
        artifact.write_text("artifact body")
        client.log_artifact(run.info.run_id, str(artifact))
        client.set_terminated(run.info.run_id)
        back = client.get_run(run.info.run_id)
        assert back.data.params["alpha"] == "0.5"
        assert back.data.metrics["loss"] == 0.25
        stored = [o.key for o in store.list(f"s3://{s.artifacts_bucket}/artifacts")]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in stored)

        # Airflow REST API v2 with a JWT from /auth/token.
        airflow = AirflowClient(s)
        deadline = time.monotonic() + 120
        while "stack_smoke" not in {d["dag_id"] for d in airflow.list_dags()}:
            assert time.monotonic() < deadline, "the smoke DAG never appeared"
            time.sleep(2)
        unauthenticated = requests.get(f"{s.airflow_base_url}/api/v2/dags", timeout=10)
        assert unauthenticated.status_code == 401

        # TorchServe with token authorization on.
        inference = s.torchserve_key("inference")
        ping = requests.get(
            f"{s.torchserve_inference}/ping",
            headers={"Authorization": f"Bearer {inference}"},
            timeout=10,
        )
        assert ping.json()["status"] == "Healthy"
        management = s.torchserve_key("management")
        models = requests.get(
            f"{s.torchserve_management}/models",
            headers={"Authorization": f"Bearer {management}"},
            timeout=10,
        )
        assert models.status_code == 200 and models.json() == {"models": []}
        no_token = requests.get(f"{s.torchserve_management}/models", timeout=10)
        assert 400 <= no_token.status_code < 500

        # No secret reached a log file.
        for log in (s.home_dir / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            assert s.s3_secret_key.get_secret_value() not in text, log
    finally:
        stopped = cli(s, "down", check=False)
    assert stopped.returncode == 0, stopped.stderr
    status = json.loads(cli(s, "status", "--json").stdout)["services"]
    assert {x["state"] for x in status} == {"stopped"}
    deadline = time.monotonic() + 30
    while stack_processes(s.home_dir) and time.monotonic() < deadline:
        time.sleep(1)
    assert stack_processes(s.home_dir) == []
    assert not list((s.home_dir / "run").glob("*.pid"))


def test_data_survives_down_and_up(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "home")
    stack = Stack(s, only=["s3", "mlflow"])
    stack.up()
    try:
        ObjectStore(s).write_bytes(f"s3://{s.raw_bucket}/keep.txt", b"kept")
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=s.mlflow_uri)
        exp_id = client.create_experiment("survives")
        stack.down()
        stack.up()
        assert ObjectStore(s).read_bytes(f"s3://{s.raw_bucket}/keep.txt") == b"kept"
        assert client.get_experiment(exp_id).name == "survives"
    finally:
        stack.down()


def test_taken_port_names_the_service_and_log(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "home")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", s.s3_port))
        squatter.listen()
        with pytest.raises(StackError) as info:
            Stack(s, only=["s3"]).up()
    message = str(info.value)
    assert "object storage (s3)" in message
    assert str(s.s3_port) in message
    assert "DUALMEDIA_S3_PORT" in message
    assert "s3.log" in message


def test_service_that_dies_at_start_points_to_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An option value rclone rejects makes the server exit the moment it starts.
    monkeypatch.setenv("RCLONE_VFS_CACHE_MODE", "bogus")
    s = make_settings(tmp_path / "home")
    service = Stack(s, only=["s3"]).service("s3")
    with pytest.raises(StackError) as info:
        service.start()
    message = str(info.value)
    assert "object storage (s3) exited with code" in message
    assert str(service.log_path) in message
    assert "vfs_cache_mode" in message  # the log's tail comes with the error
    assert service.process() is None
    assert not service.pid_path.exists()


def test_down_leaves_unrelated_processes_alone(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "home")
    stack = Stack(s, only=["s3"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A pid file naming a process `up` did not start (pid reuse) is ignored.
        pid_path = stack.service("s3").pid_path
        pid_path.parent.mkdir(parents=True)
        pid_path.write_text(json.dumps({"pid": bystander.pid, "create_time": 1.0}))
        stack.down()
        assert bystander.poll() is None
    finally:
        bystander.kill()
