"""Ingestion memory: peak RSS for a dataset and one four times its size, side by side.

Ingestion streams manifests, fetches media a chunk at a time and writes Parquet shards
of bounded size, so its peak memory should not grow with the dataset. Each size is
ingested in a fresh process (so peaks don't mix) against a private rclone S3 server.

The small dataset holds more records than one shard (IngestConfig.shard_rows, 512):
below that, the shard buffer itself grows with the dataset and the comparison would
measure the buffer, not the streaming.

    .venv/bin/python benchmarks/ingest_memory.py [--small 1000] [--factor 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys, time
from dualmedia.settings import Settings
from ingestion.pipeline import ingest
settings = Settings(_env_file=None)
started = time.perf_counter()
summary = ingest(sys.argv[1], settings)
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "accepted": summary["accepted"],
}))
"""


def main() -> None:
    from dualmedia.datasets import upload_dataset
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from synthetic import generate_dataset
    from tests.conftest import make_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="records of the small dataset")
    parser.add_argument("--factor", type=int, default=4, help="how much bigger the large one is")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-") as tmp:
        settings = make_settings(Path(tmp) / "home")
        stack = Stack(settings, only=["s3"])
        stack.up()
        try:
            rows = []
            for n in (args.small, args.small * args.factor):
                folder = Path(tmp) / f"ds-{n}"
                generate_dataset(folder, n, seed=0)
                uri = f"s3://{settings.raw_bucket}/bench-{n}"
                upload_dataset(folder, uri, ObjectStore(settings))
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, uri],
                    cwd=REPO,
                    env={**os.environ, **settings.child_env()},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result["records"] = n
                result["wall_seconds"] = round(time.perf_counter() - started, 1)
                rows.append(result)
        finally:
            stack.down()
    small, large = rows
    report = {
        "runs": rows,
        "records_ratio": large["records"] / small["records"],
        "peak_rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "seconds_ratio": round(large["seconds"] / small["seconds"], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'records':>8} {'peak RSS MB':>12} {'ingest s':>9}")
    for r in rows:
        print(f"{r['records']:>8} {r['peak_rss_mb']:>12.0f} {r['seconds']:>9.1f}")
    print(
        f"{report['records_ratio']:.0f}x the records: {report['peak_rss_ratio']:.2f}x the peak "
        f"memory, {report['seconds_ratio']:.2f}x the time"
    )


if __name__ == "__main__":
    main()
