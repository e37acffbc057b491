"""Scaling out on this machine: ingestion on 1 vs 2 Celery workers, alignment training in
1 vs 2 DDP processes, side by side in one run.

Ingestion: the production profile (Airflow's CeleryExecutor over this machine's
PostgreSQL and Redis, MLflow on PostgreSQL) runs the training DAG on a dataset of 8
batches; its validation is one mapped task per batch, each taken by whichever worker is
free. Measured from the task instances: from the start of `pull` to the end of
`snapshot` (records/s); the run is then stopped (training is not what is measured here).
First with 2 workers, then with one of them stopped, on two copies of the dataset (so
neither run reuses the other's snapshot).

Training: the alignment stage of configs/train/tiny-ddp.yaml in 1 process and in 2
(training.launch: torchrun, gloo), on the same snapshot, the same global batch: items/s
of the fit, and the wall time with the launch.

On 2 cores the ratios say more about overhead than about speed-up: two workers or two
training processes share the same two cores that one already used, and a DDP step adds
a gather and an all-reduce. On a cluster each worker or process has its own machine or GPU.

    .venv/bin/python benchmarks/scale_out.py [--batches 8] [--records 50] [--json]

Needs PostgreSQL and Redis on 127.0.0.1 (5432, 6379). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 10
DAG = "multimodal_training"


def _stamp(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float("nan")


def ingest_once(settings: Any, uri: str, records: int) -> dict[str, Any]:
    """Run the training DAG on `uri` until its snapshot is published; records/s."""
    from dualmedia.airflow_api import AirflowClient
    from dualmedia.stack import postgres as pg

    client = AirflowClient(settings)
    client.set_paused(DAG, False)
    run = client.trigger(DAG, {"dataset_uri": uri, "train_config": "tiny"})
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + 1200
    query = (
        "SELECT task_id, state, start_date, end_date, hostname, pid FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s"
    )
    while time.monotonic() < deadline:
        rows = pg.query(settings, settings.postgres_airflow_db, query, (DAG, run_id))
        by_task: dict[str, list[tuple]] = {}
        for row in rows:
            by_task.setdefault(row[0], []).append(row)
        failed = [r for r in rows if r[1] in ("failed", "upstream_failed")]
        if failed:
            raise RuntimeError(f"{DAG} {run_id}: {failed}")
        if [r[1] for r in by_task.get("snapshot", [])] == ["success"]:
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"{DAG} {run_id}: no snapshot after 1200 s")
    client.request("PATCH", f"/dags/{DAG}/dagRuns/{run_id}", json={"state": "failed"})
    started = _stamp(by_task["pull"][0][2])
    ended = _stamp(by_task["snapshot"][0][3])
    validators = {(r[4], r[5]) for r in by_task["validate_batch"]}
    seconds = ended - started
    return {
        "seconds": round(seconds, 1),
        "records_per_s": round(records / seconds, 1),
        "mapped_tasks": len(by_task["validate_batch"]),
        "task_processes": len(validators),
    }


def train_once(settings: Any, snapshot_uri: str, processes: int, epochs: int) -> dict[str, Any]:
    from training.config import named_config
    from training.launch import run_training

    config = named_config("tiny-ddp", epochs=epochs)
    hardware = {"devices": processes, "strategy": "ddp" if processes > 1 else "auto"}
    config = config.model_copy(
        update={
            "hardware": config.hardware.model_copy(update=hardware),
            "run_name": f"scale-out-{processes}-{uuid.uuid4().hex[:6]}",
        }
    )
    started = time.perf_counter()
    result = run_training(snapshot_uri, config, settings, progress=False, stop_after="alignment")
    wall = time.perf_counter() - started
    stage = result["stages"]["alignment"]
    items = stage["global_step"] * config.data.batch_size
    return {
        "processes": stage["world_size"],
        "steps": stage["global_step"],
        "fit_seconds": stage["seconds"],
        "items_per_s": round(items / stage["seconds"], 1),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    from pydantic import SecretStr

    from dualmedia.datasets import upload_dataset
    from dualmedia.stack import Stack
    from dualmedia.stack import postgres as pg
    from dualmedia.storage import ObjectStore
    from synthetic import generate_dataset
    from synthetic.fixtures import synthetic_snapshot
    from tests.conftest import make_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of the dataset")
    parser.add_argument("--records", type=int, default=50, help="records per batch")
    parser.add_argument("--train-items", type=int, default=400, help="items of the training set")
    parser.add_argument("--epochs", type=int, default=3, help="alignment epochs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="dualmedia-scale-out-") as tmp:
        settings = make_settings(
            Path(tmp) / "home",
            profile="production",
            postgres_url=SecretStr(POSTGRES_URL),
            postgres_airflow_db=f"dm_bench_airflow_{suffix}",
            postgres_mlflow_db=f"dm_bench_mlflow_{suffix}",
            postgres_feast_db=f"dm_bench_feast_{suffix}",
            redis_url=SecretStr(f"redis://127.0.0.1:6379/{REDIS_DB}"),
            redis_key_prefix=f"dmbench_{suffix}:",
            airflow_workers=2,
            airflow_worker_concurrency=1,
            airflow_pause_new_dags=True,
        )
        stack = Stack(settings, only=["s3", "mlflow", "airflow"])
        try:
            print(
                "starting the production stack (PostgreSQL, Redis, 2 Celery workers)",
                file=sys.stderr,
            )
            stack.up()
            store = ObjectStore(settings)
            folder = Path(tmp) / "dataset"
            for b in range(args.batches):
                generate_dataset(
                    folder, args.records, seed=8, batch=f"batch-{b + 1:04d}",
                    start_index=b * args.records,
                )  # fmt: skip
            records = args.batches * args.records
            ingestion = {}
            for workers in (2, 1):
                if workers == 1:
                    stack.service("airflow-worker-2").stop()
                uri = f"s3://{settings.raw_bucket}/scale-out-{workers}"
                upload_dataset(folder, uri, store)
                print(f"ingesting {records} records on {workers} worker(s)", file=sys.stderr)
                ingestion[workers] = ingest_once(settings, uri, records)
            snapshot = synthetic_snapshot(
                store, settings.lake_bucket, Path(tmp) / "train", args.train_items, seed=2
            )
            training = {}
            for processes in (1, 2):
                print(f"alignment training in {processes} process(es)", file=sys.stderr)
                training[processes] = train_once(settings, snapshot, processes, args.epochs)
        finally:
            stack.down()
            for name in pg.platform_databases(settings):
                pg.drop_database(settings, name)
            _delete_keys(settings.redis_key_prefix)
    report = {
        "ingestion": {
            "records": records,
            "batches": args.batches,
            "by_workers": ingestion,
            "ratio_2_over_1": round(
                ingestion[2]["records_per_s"] / ingestion[1]["records_per_s"], 2
            ),
        },
        "alignment": {
            "items": args.train_items,
            "by_processes": training,
            "ratio_2_over_1": round(training[2]["items_per_s"] / training[1]["items_per_s"], 2),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    ing, aln = report["ingestion"], report["alignment"]
    print(f"ingestion: {records} records in {args.batches} batches (mapped validation)")
    print(f"  {'':<22}{'1 worker':>10}{'2 workers':>11}{'2 / 1':>8}")
    print(
        f"  {'records/s':<22}{ingestion[1]['records_per_s']:>10}"
        f"{ingestion[2]['records_per_s']:>11}{ing['ratio_2_over_1']:>7}x"
    )
    print(f"  {'seconds':<22}{ingestion[1]['seconds']:>10}{ingestion[2]['seconds']:>11}")
    print(f"alignment: {args.train_items} items, {args.epochs} epochs, global batch as configured")
    print(f"  {'':<22}{'1 process':>10}{'2 processes':>13}{'2 / 1':>8}")
    print(
        f"  {'items/s (fit)':<22}{training[1]['items_per_s']:>10}"
        f"{training[2]['items_per_s']:>13}{aln['ratio_2_over_1']:>7}x"
    )
    print(
        f"  {'wall s (with launch)':<22}{training[1]['wall_seconds']:>10}"
        f"{training[2]['wall_seconds']:>13}"
    )
    print("On 2 cores these ratios measure overhead (both share the same cores), not speed-up.")


def _delete_keys(prefix: str) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


if __name__ == "__main__":
    main()
