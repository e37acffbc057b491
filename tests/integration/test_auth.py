"""Authentication where a model can change, against real servers on loopback.

A private stack (rclone S3 + `mlflow server --app-name basic-auth`) for the module: an
anonymous or wrongly authenticated client can neither read nor write MLflow (so nobody
moves `champion`), the platform's own clients authenticate from the settings, the S3
server refuses the keys that used to be fixed in the code, no secret reaches `dualmedia
status --json`, `up` or a log, and rotating the MLflow password is a restart.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dualmedia import credentials
from dualmedia.settings import Settings
from dualmedia.stack import Stack, StackError
from dualmedia.storage import ObjectStore, StorageError
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

MODEL = "auth-test-model"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = make_settings(tmp_path_factory.mktemp("auth") / "home")
    services = Stack(s, only=["s3", "mlflow"])
    try:
        services.up()
        yield s
    finally:
        services.down()


@pytest.fixture(scope="module")
def registered(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Through the platform's own (authenticated) client: a run with a param, a metric and
    an artifact proxied into S3, and a registered model with two versions, champion = 1."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    experiment_id = client.create_experiment("auth")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_param(run_id, "alpha", "0.5")
    client.log_metric(run_id, "loss", 0.25)
    model_dir = tmp_path_factory.mktemp("model") / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("not a real model")
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run_id)
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(MODEL, "champion", "1")
    return {"experiment_id": experiment_id, "run_id": run_id}


def _secrets(s: Settings) -> dict[str, str]:
    assert s.s3_access_key is not None and s.s3_secret_key is not None
    assert s.mlflow_password is not None
    return {
        "s3 access key": s.s3_access_key.get_secret_value(),
        "s3 secret key": s.s3_secret_key.get_secret_value(),
        "mlflow password": s.mlflow_password.get_secret_value(),
        "mlflow csrf key": credentials.local_mlflow_secrets(s.home_dir)["flask_secret_key"],
    }


def _leaked(s: Settings, text: str) -> list[str]:
    return [name for name, value in _secrets(s).items() if value in text]


def test_anonymous_clients_can_neither_read_nor_write_mlflow(
    stack: Settings, registered: dict[str, str]
) -> None:
    base = f"http://{stack.host}:{stack.mlflow_port}"  # not mlflow_uri: no credentials
    run_id = registered["run_id"]
    move_champion = ("POST", "/api/2.0/mlflow/registered-models/alias")
    body = {"name": MODEL, "alias": "champion", "version": "2"}
    attempts = [
        move_champion,
        ("POST", "/api/2.0/mlflow/model-versions/create"),
        ("POST", "/api/2.0/mlflow/runs/log-parameter"),
        ("DELETE", "/api/2.0/mlflow/registered-models/delete"),
        ("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}"),
        ("GET", f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion"),
        ("GET", "/api/2.0/mlflow/experiments/search?max_results=10"),
        ("GET", f"/ajax-api/2.0/mlflow/runs/get?run_id={run_id}"),
        ("GET", f"/get-artifact?path=model/weights.txt&run_uuid={run_id}"),
        ("GET", "/"),  # the UI itself
    ]
    for auth in (None, ("admin", "not-the-password-42"), ("nobody", "not-the-password-42")):
        for method, path in attempts:
            answer = requests.request(method, base + path, json=body, auth=auth, timeout=30)
            assert answer.status_code == 401, (auth, method, path, answer.status_code)
            assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(f"{base}/health", timeout=10).status_code == 200  # health stays open

    # The champion did not move; the platform's client reads everything back.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    run = client.get_run(run_id)
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.metrics == {"loss": 0.25}
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/weights.txt"]
    stored = [o.key for o in ObjectStore(stack).list(f"s3://{stack.artifacts_bucket}/artifacts")]
    assert any(k.endswith(f"{run_id}/artifacts/model/weights.txt") for k in stored)
    # ... and the same credentials over plain HTTP (what the browser test sends).
    login = stack.mlflow_credentials()
    answer = requests.post(base + move_champion[1], json=body, auth=login, timeout=30)
    assert answer.status_code == 200, answer.text
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"


def test_a_user_the_admin_made_gets_no_permission_by_default(
    stack: Settings, registered: dict[str, str]
) -> None:
    base = f"http://{stack.host}:{stack.mlflow_port}"
    admin = stack.mlflow_credentials()
    created = requests.post(
        f"{base}/api/2.0/mlflow/users/create",
        json={"username": "viewer", "password": "viewer-password-123"},
        auth=admin,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    viewer = ("viewer", "viewer-password-123")
    run = requests.get(
        f"{base}/api/2.0/mlflow/runs/get",
        params={"run_id": registered["run_id"]},
        auth=viewer,
        timeout=30,
    )
    assert run.status_code == 403
    alias = requests.post(
        f"{base}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "champion", "version": "1"},
        auth=viewer,
        timeout=30,
    )
    assert alias.status_code == 403
    # Nobody but an admin makes users (no self-service sign-up).
    signup = requests.post(
        f"{base}/api/2.0/mlflow/users/create",
        json={"username": "intruder", "password": "intruder-password-1"},
        auth=viewer,
        timeout=30,
    )
    assert signup.status_code == 403


def test_the_s3_server_refuses_the_keys_once_fixed_in_the_code(stack: Settings) -> None:
    for access, secret in (("dualmedia", "dualmedia-secret"), (stack.s3_access_key, "wrong")):
        wrong = Settings(  # type: ignore[call-arg]
            _env_file=None,
            home=stack.home_dir,
            s3_port=stack.s3_port,
            s3_access_key=access,
            s3_secret_key=secret,
            s3_max_attempts=1,
        )
        with pytest.raises(StorageError):
            ObjectStore(wrong).read_bytes(f"s3://{stack.raw_bucket}/anything")
    anonymous = requests.get(f"{stack.s3_endpoint}/{stack.raw_bucket}", timeout=10)
    assert anonymous.status_code in (400, 403), anonymous.text  # rclone: 400 AccessDenied


def test_credential_files_are_owner_only(stack: Settings) -> None:
    folder = stack.home_dir / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("s3.json", "mlflow.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    mlflow_state = stack.home_dir / "mlflow"
    for name in ("basic_auth.db", "basic_auth.ini"):
        assert stat.S_IMODE((mlflow_state / name).stat().st_mode) == 0o600
    assert not _leaked(stack, (mlflow_state / "basic_auth.ini").read_text())


def test_no_secret_in_cli_output_or_logs(stack: Settings, registered: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALMEDIA_", "MLFLOW_"))}
    env.update(stack.child_env())
    outputs = []
    for args in (["status", "--json"], ["up", "-s", "s3", "-s", "mlflow"]):
        done = subprocess.run(
            [sys.executable, "-m", "dualmedia.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        outputs.append(done.stdout + done.stderr)
    status = json.loads(outputs[0])["services"]
    assert {x["service"]: x["state"] for x in status}["mlflow"] == "running"
    # `up` says where the MLflow login is, not what it is.
    assert "login admin with the password in" in outputs[1]
    assert str(stack.home_dir / "secrets" / "mlflow.json") in outputs[1]
    for text in outputs:
        assert not _leaked(stack, text)
    logs = list((stack.home_dir / "logs").glob("*.log"))
    assert {log.name for log in logs} == {"s3.log", "mlflow.log"}
    for log in logs:
        assert not _leaked(stack, log.read_text(errors="replace")), log


def test_airflow_admin_password_file_is_owner_only(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "home")
    airflow = Stack(s, only=["airflow"]).service("airflow")
    path = Path(airflow.passwords_file)  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True)
    airflow.prepare()  # what `up` does before `airflow standalone` starts
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    generated = s.airflow_admin_password()
    assert len(generated) >= 20
    assert json.loads(path.read_text()) == {"admin": generated}
    airflow.prepare()  # the next `up` keeps it
    assert s.airflow_admin_password() == generated
    # A file Airflow wrote world-readable (before this check) is tightened, password kept.
    path.chmod(0o644)
    airflow.prepare()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert s.airflow_admin_password() == generated
    # Another home, another password.
    other = make_settings(tmp_path / "other")
    other_airflow = Stack(other, only=["airflow"]).service("airflow")
    Path(other_airflow.passwords_file).parent.mkdir(parents=True)  # type: ignore[attr-defined]
    other_airflow.prepare()
    assert other.airflow_admin_password() != generated


def test_rotating_the_mlflow_password_is_a_restart(
    stack: Settings, registered: dict[str, str]
) -> None:
    """docs/security.md: stop MLflow, delete secrets/mlflow.json, start it again."""
    old = stack.mlflow_credentials()
    Stack(stack, only=["mlflow"]).down()
    (stack.home_dir / "secrets" / "mlflow.json").unlink()
    rotated = Settings(  # type: ignore[call-arg]
        _env_file=None,
        home=stack.home_dir,
        s3_port=stack.s3_port,
        mlflow_port=stack.mlflow_port,
        startup_timeout_s=stack.startup_timeout_s,
    )
    new = rotated.mlflow_credentials()
    assert new is not None and old is not None and new[1] != old[1]
    Stack(rotated, only=["mlflow"]).up()
    base = f"http://{stack.host}:{stack.mlflow_port}"
    url = f"{base}/api/2.0/mlflow/runs/get?run_id={registered['run_id']}"
    assert requests.get(url, auth=old, timeout=30).status_code == 401
    answer = requests.get(url, auth=new, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["run"]["data"]["params"] == [{"key": "alpha", "value": "0.5"}]


def test_a_too_short_mlflow_password_is_refused_before_the_server_starts(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "home", mlflow_password="short-pw")
    mlflow = Stack(s, only=["mlflow"]).service("mlflow")
    mlflow.state_dir.mkdir(parents=True)
    with pytest.raises(StackError, match="DUALMEDIA_MLFLOW_PASSWORD must have at least 12"):
        mlflow.prepare()
