"""Running DAGs with `airflow dags test` in a private AIRFLOW_HOME (no scheduler needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dualmedia.settings import REPO_ROOT, Settings


def airflow_env(home: Path, settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALMEDIA_", "AIRFLOW"))}
    env.update(settings.child_env())
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def airflow(
    home: Path, settings: Settings, *args: str, timeout: float = 1800
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=airflow_env(home, settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dags_test(
    home: Path, settings: Settings, dag_id: str, conf: dict, skip: str | None = None
) -> subprocess.CompletedProcess:
    """`airflow dags test` after a one-time `airflow db migrate` of the private home.

    `skip`: a regex of task ids Airflow marks successful without running them.
    """
    if not (home / "airflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        migrated = airflow(home, settings, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
    extra = ["--mark-success-pattern", skip] if skip else []
    return airflow(home, settings, "dags", "test", dag_id, "-c", json.dumps(conf), *extra)
