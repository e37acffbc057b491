"""The profile setting: which services the stack holds, what their backends say, and that
connection passwords never reach status output or command lines (no services needed)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.stack.postgres import masked

SECRET = "s3cr3t-pw"


def make(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, home=tmp_path / "home", **values)  # type: ignore[call-arg]


def test_local_profile_is_unchanged(tmp_path: Path) -> None:
    s = make(tmp_path)
    stack = Stack(s)
    assert [x.name for x in stack.services] == ["s3", "mlflow", "airflow", "torchserve"]
    airflow = stack.service("airflow")
    assert airflow.command()[-1] == "standalone"
    assert airflow.backend()["executor"] == "LocalExecutor"
    assert str(airflow.backend()["metadata_db"]).startswith("sqlite:///")
    assert stack.service("mlflow").backend()["backend_store"].startswith("sqlite:///")
    assert stack.feature_store_backend()["online_store"] == "sqlite"


def test_production_profile_runs_airflow_as_components(tmp_path: Path) -> None:
    s = make(tmp_path, profile="production", airflow_workers=3, airflow_worker_concurrency=2)
    stack = Stack(s)
    names = [x.name for x in stack.services]
    assert names == [
        "s3",
        "mlflow",
        "airflow",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
        "airflow-worker-3",
        "torchserve",
    ]
    # --service airflow selects every Airflow process.
    assert [x.name for x in Stack(s, only=["airflow"]).services] == names[2:9]
    env = stack.service("airflow-worker-2").extra_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "6"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"
    # Every component shares the same per-install keys.
    keys = {stack.service(n).extra_env()["AIRFLOW__API_AUTH__JWT_SECRET"] for n in names[2:9]}
    assert len(keys) == 1
    assert (s.home_dir / "airflow" / "secrets.json").stat().st_mode & 0o077 == 0
    cmd = stack.service("airflow-worker-2").command()
    assert cmd[cmd.index("--queues") + 1] == "default,train"
    assert "--skip-serve-logs" in cmd  # only worker 1 binds the log server port
    assert stack.service("airflow-worker-1").ports() == {
        s.airflow_worker_log_port: ("DUALMEDIA_AIRFLOW_WORKER_LOG_PORT")
    }


def test_a_train_only_pool(tmp_path: Path) -> None:
    s = make(tmp_path, profile="production", airflow_worker_queues="train")
    cmd = Stack(s).service("airflow-worker-1").command()
    assert cmd[cmd.index("--queues") + 1] == "train"


def test_database_urls_keep_the_server_and_swap_the_database(tmp_path: Path) -> None:
    s = make(
        tmp_path,
        postgres_url=SecretStr(f"postgresql://app:{SECRET}@db.internal:6432/x?sslmode=require"),
    )
    assert s.postgres_database_url("dualmedia_mlflow", "postgresql+psycopg2") == (
        f"postgresql+psycopg2://app:{SECRET}@db.internal:6432/dualmedia_mlflow?sslmode=require"
    )
    assert (
        masked(s.postgres_database_url("d"))
        == "postgresql://app:***@db.internal:6432/d?sslmode=require"
    )


def test_no_password_in_status_or_command_lines(tmp_path: Path) -> None:
    s = make(
        tmp_path,
        profile="production",
        postgres_url=SecretStr(f"postgresql://app:{SECRET}@127.0.0.1:5432"),
        redis_url=SecretStr(f"redis://:{SECRET}@127.0.0.1:6379/3"),
        feast_redis=SecretStr(f"127.0.0.1:6379,password={SECRET}"),
    )
    stack = Stack(s)
    shown = json.dumps(
        {
            "services": [x.to_dict() for x in stack.status()],
            "feature_store": stack.feature_store_backend(),
            "commands": [x.command() for x in stack.services],
        }
    )
    assert SECRET not in shown
    assert "app:***@" in shown
    # The password reaches the processes through their environment only.
    assert SECRET in stack.service("mlflow").extra_env()["MLFLOW_BACKEND_STORE_URI"]


def test_container_entry_point_shows_the_same_command(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMEDIA_")}
    env.update(DUALMEDIA_PROFILE="production", DUALMEDIA_HOME=str(tmp_path / "home"))
    run = [sys.executable, "-m", "dualmedia.stack.run", "--show"]
    shown = subprocess.run([*run, "airflow-worker-1"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    expected = Stack(make(tmp_path, profile="production")).service("airflow-worker-1").command()
    assert shown.stdout.split() == expected
    wrong = subprocess.run([*run, "airflow-wrker"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 1
    assert "no service 'airflow-wrker' in the production profile" in wrong.stderr
