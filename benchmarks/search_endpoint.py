"""The `search` endpoint's latency over a small and a catalogue-scale catalogue, side by side.

One private TorchServe (the configured workers, batching and threads) serves the default
architecture (random weights) twice: over a 1k-item catalogue and over a 100k-item one
(random unit vectors per modality and fused, each with a batch attribute; indexes as
publish builds them: exact below 100k items per target, HNSW at 100k). Both load their
catalogue from object storage (rclone S3) as workers do in production. Each query is a
new sentence (the text encoder runs every time), searching the fused vectors, k=10,
without a filter and with a 1% one (one batch of 100). The cells are measured in
interleaved rounds at concurrency 8, so both catalogues share the machine's noise.

  .venv/bin/python benchmarks/search_endpoint.py                # about 4 minutes
  .venv/bin/python benchmarks/search_endpoint.py --large 1M     # memory permitting
  .venv/bin/python benchmarks/search_endpoint.py --json

Progress goes to stderr; the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_support import serving_benchmark  # noqa: E402

QUERIES = {
    "text -> fused": {},
    "text -> fused, 1% filter": {"filter": {"batch": "batch-007"}},
}


def log(message: str) -> None:
    print(f"[search-endpoint {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def bodies(kind: str, n: int, counter: itertools.count) -> list[bytes]:
    out = []
    for _ in range(n):
        text = f"order {next(counter)}: the mug arrived cracked"
        body = {"query": {"text": text}, "target": "fused", "k": 10, **QUERIES[kind]}
        out.append(json.dumps(body).encode())
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualmedia.stack import Stack
    from serving.client import TorchServeClient

    bench = serving_benchmark()
    sizes = {"small": parse_size(args.small), "large": parse_size(args.large)}
    tmp = Path(tempfile.mkdtemp(prefix="dualmedia-bench-search-"))
    settings = bench.private_settings(tmp / "home")
    counter = itertools.count()
    latencies: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        s3 = Stack(settings, only=["s3"])
        cleanup.callback(s3.down)
        s3.up()
        archives = {}
        for n, (name, size) in enumerate(sizes.items(), start=1):
            log(f"catalogue {name}: {size:,} items per target, published to object storage")
            t = time.perf_counter()
            _, archives[name], _ = bench.build_model(tmp / name, settings, size, str(n))
            log(f"  {time.perf_counter() - t:.0f} s")
        torchserve = bench.TorchServeInstance(settings, archives["small"])
        cleanup.callback(torchserve.down)
        torchserve.up()
        shutil.copy(archives["large"], settings.torchserve_model_store / archives["large"].name)
        client = TorchServeClient(settings)
        for name, archive in archives.items():
            t = time.perf_counter()
            client.register(
                archive.name,
                f"{name}-search",  # the handler takes the task from the last "-" part
                batch_size=settings.serving_batch_size,
                max_batch_delay_ms=settings.serving_max_batch_delay_ms,
                workers=settings.serving_workers,
            )
            log(f"registered {name}-search: {time.perf_counter() - t:.0f} s")
        base, headers = settings.torchserve_inference, torchserve.headers()
        cells = [(name, kind) for name in sizes for kind in QUERIES]
        for name, kind in cells:  # warm-up: first requests after loading are slow
            url = f"{base}/predictions/{name}-search"
            bench.load_http(url, headers, bodies(kind, 32, counter), args.concurrency, 60.0)
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}")
            for name, kind in cells:
                url = f"{base}/predictions/{name}-search"
                m = bench.load_http(
                    url, headers, bodies(kind, args.requests, counter), args.concurrency, 30.0
                )
                latencies.setdefault((name, kind), []).extend(m.latencies)
                errors.setdefault((name, kind), []).extend(m.errors)
    rows = []
    for name, kind in cells:
        ms = np.asarray(latencies[(name, kind)]) * 1000
        rows.append(
            {
                "catalogue": name,
                "items": sizes[name],
                "query": kind,
                "requests": len(ms),
                "errors": len(errors[(name, kind)]),
                "error_sample": errors[(name, kind)][:1],
                "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            }
        )
    for row in rows:
        small = next(r for r in rows if r["catalogue"] == "small" and r["query"] == row["query"])
        for key in ("p50_ms", "p99_ms"):
            row[f"{key[:3]}_x_small"] = (
                row[key] / small[key] if row[key] is not None and small[key] else None
            )
    return {
        "concurrency": args.concurrency,
        "workers": settings.serving_workers,
        "batch": [settings.serving_batch_size, settings.serving_max_batch_delay_ms],
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'catalogue':>10} {'query':<26} {'requests':>8} {'errors':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'p50 x':>6} {'p99 x':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['items']:>10,} {r['query']:<26} {r['requests']:>8} {r['errors']:>6} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['p50_x_small']:>6.2f} "
            f"{r['p99_x_small']:>6.2f}"
        )
    lines.append("")
    lines.append(
        f"TorchServe {result['workers']} workers, batch {result['batch'][0]} / "
        f"{result['batch'][1]} ms, concurrency {result['concurrency']}; x: against the "
        "small catalogue, same query, same run"
    )
    for r in result["rows"]:
        if r["error_sample"]:
            lines.append(f"errors {r['items']:,} {r['query']}: {r['error_sample'][0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", default="1k", help="items per target, small catalogue")
    parser.add_argument("--large", default="100k", help="items per target, large catalogue")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
