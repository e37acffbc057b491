"""The training DAG's ingestion tasks under `airflow dags test`, against real S3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualmedia.datasets import upload_dataset
from dualmedia.settings import REPO_ROOT, Settings
from dualmedia.snapshot import Snapshot
from dualmedia.storage import ObjectStore
from ingestion.pipeline import plan_ingest
from synthetic import generate_dataset
from tests.integration.airflow_helpers import dags_test

pytestmark = pytest.mark.integration


PARSE = """
import json, runpy, sys, time
sys.path.insert(0, 'dags')
import airflow.sdk  # what every DAG file needs; not what this test measures
started = time.perf_counter()
runpy.run_path(sys.argv[1])
heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]
print(json.dumps({'seconds': time.perf_counter() - started, 'heavy': heavy}))
"""
# Only S3 runs in this test: the training and serving tasks are marked successful
# unrun (tests/e2e runs the whole DAG against the whole stack).
AFTER_INGESTION = (
    "^(train_alignment|train_fusion|register|gate|publish_features"
    "|build_archive|deploy|smoke_test)$"
)
TRIVIAL_DAG = """
import pendulum
from airflow.sdk import dag, task

@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1))
def trivial():
    @task
    def nothing():
        pass
    nothing()

trivial()
"""


@pytest.mark.parametrize(
    "dag_file", ["multimodal_training.py", "drift_monitor.py", "feedback_batches.py"]
)
def test_dag_files_parse_cheaply_without_heavy_imports(dag_file: str, tmp_path: Path) -> None:
    def parse(path: Path) -> dict:
        result = subprocess.run(
            [sys.executable, "-c", PARSE, str(path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    (tmp_path / "trivial.py").write_text(TRIVIAL_DAG)
    ours = parse(REPO_ROOT / "dags" / dag_file)
    trivial = parse(tmp_path / "trivial.py")
    assert ours["heavy"] == []
    # Relative to a trivial DAG parsed the same way in the same run (no absolute limit:
    # machines are noisy): settings and the stage wiring may cost a little, not a model.
    print(f"{dag_file}: {ours['seconds']:.3f}s; trivial DAG: {trivial['seconds']:.3f}s")
    assert ours["seconds"] < 20 * trivial["seconds"] + 0.5


def test_ingestion_tasks_run_under_dags_test(s3_settings: Settings, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "ds", 80, seed=21)
    uri = f"s3://{s3_settings.raw_bucket}/dag-ingest"
    upload_dataset(tmp_path / "ds", uri, ObjectStore(s3_settings))
    home = tmp_path / "airflow"
    result = dags_test(
        home, s3_settings, "multimodal_training", {"dataset_uri": uri}, skip=AFTER_INGESTION
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    plan = plan_ingest(uri, s3_settings)
    assert plan["up_to_date"]  # the DAG published exactly this snapshot
    snap = Snapshot(ObjectStore(s3_settings), plan["snapshot_uri"])
    assert snap.info.source_uri == uri
    assert snap.info.counts["total"] == 80

    # A broken data contract fails at once, without retries.
    store = ObjectStore(s3_settings)
    store.write_bytes(f"s3://{s3_settings.raw_bucket}/no-contract/b1/manifest.jsonl", b"{}\n")
    bad = dags_test(
        home,
        s3_settings,
        "multimodal_training",
        {"dataset_uri": f"s3://{s3_settings.raw_bucket}/no-contract"},
        skip=AFTER_INGESTION,
    )
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "AirflowFailException" in output or "ContractError" in output
    assert "dataset.yaml: missing" in output
    assert "up_for_retry" not in output
