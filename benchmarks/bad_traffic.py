"""Hostile traffic beside honest traffic: how much does it cost the honest users?

One run starts a private object store and TorchServe (free ports, a temporary folder)
and deploys the default architecture (random weights) the way `serving.deploy` does, with
the configured batching and workers. The probes are synthetic/traffic.py's fixed mix:
every endpoint and modality for the good requests; decoding bombs, 100,000 nested
brackets, a superscript `k`, a BMP, bad base64, an unknown field, not-JSON and a body
over the server's limit for the hostile ones.

Two workloads at the same concurrency, measured in interleaved rounds (A B, B A, ...) so
they see the same background load:
  - good only: the good probes, repeated;
  - mixed: the same good requests with the hostile ones interleaved.
It prints, per workload, good requests answered correctly / sent (the answer equal to
the one the request gets alone), bad ones refused cleanly / sent (the 4xx and error code
that name the problem), worker restarts (worker pids that changed), and the good
requests' p50 / p99, with the mixed workload's ratio to good-only. Timings only: nothing
here fails on a threshold.

    .venv/bin/python benchmarks/bad_traffic.py [--rounds 6] [--repeat 4]
        [--concurrency 16] [--json]

About 2-3 minutes on 2 cores (most of it starting TorchServe).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_support import serving_benchmark  # noqa: E402

from synthetic.traffic import Probe, good_probes, hostile_probes, judge  # noqa: E402

ENDPOINTS = ("embed", "search", "insights")


def send(client: Any, probe: Probe) -> tuple[int, Any, float]:
    started = time.perf_counter()
    response = client.predict(probe.task, probe.body, raw=True)
    seconds = time.perf_counter() - started
    try:
        return response.status_code, response.json(), seconds
    except ValueError:
        return response.status_code, None, seconds


def run_workload(
    client: Any, probes: list[Probe], alone: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: send(client, p), probes))
    out: dict[str, Any] = {"good_sent": 0, "good_ok": 0, "bad_sent": 0, "bad_ok": 0}
    out["good_seconds"], out["wrong"] = [], []
    for probe, (status, answer, seconds) in zip(probes, results, strict=True):
        problem = judge(probe, status, answer, alone.get(probe.name))
        kind = "good" if probe.good else "bad"
        out[f"{kind}_sent"] += 1
        out[f"{kind}_ok"] += problem is None
        if problem:
            out["wrong"].append(problem)
        if probe.good:
            out["good_seconds"].append(seconds)
    return out


def merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, [] if isinstance(value, list) else 0) + value


def summary(m: dict[str, Any]) -> dict[str, Any]:
    ms = np.asarray(m["good_seconds"]) * 1000.0
    return {
        "good_ok": m["good_ok"],
        "good_sent": m["good_sent"],
        "bad_ok": m["bad_ok"],
        "bad_sent": m["bad_sent"],
        "good_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "good_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "wrong_sample": m["wrong"][:5],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualmedia.stack import Stack
    from serving.backend import get_backend
    from serving.deploy import deploy

    bench = serving_benchmark()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="dualmedia-bench-bad-traffic-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        settings = bench.private_settings(tmp / "home")
        stack = Stack(settings, only=["s3", "torchserve"])
        cleanup.callback(stack.down)
        print("starting object storage and TorchServe ...", file=sys.stderr)
        stack.up()
        _, archive, params = bench.build_model(tmp)
        deploy(archive, "1", settings)
        client = get_backend(settings)
        print(
            f"deployed the default architecture ({params / 1e6:.1f} M parameters)", file=sys.stderr
        )
        good, hostile = good_probes(), hostile_probes(settings.serving_max_request_bytes)
        alone = {}
        for probe in good:
            for _ in range(3):  # warm-up, then the reference answer
                status, alone[probe.name], _ = send(client, probe)
            assert status == 200, (probe.name, alone[probe.name])
        pids = {t: set(client.worker_pids(t)) for t in ENDPOINTS}
        good_only = good * args.repeat
        # One hostile request after each good one, every hostile kind in turn.
        mixed = [p for i, g in enumerate(good_only) for p in (g, hostile[i % len(hostile)])]
        workloads = {"good only": good_only, "mixed": mixed}
        totals: dict[str, dict[str, Any]] = {name: {} for name in workloads}
        names = list(workloads)
        for r in range(args.rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                merge(totals[name], run_workload(client, workloads[name], alone, args.concurrency))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        after = {t: set(client.worker_pids(t)) for t in ENDPOINTS}
    restarts = sum(len(pids[t] - after[t]) for t in ENDPOINTS)
    result = {name: summary(m) for name, m in totals.items()}
    base, mix = result["good only"], result["mixed"]
    return {
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "hostile_kinds": [p.name for p in hostile],
        "workloads": result,
        "worker_restarts": restarts,
        "p50_ratio_mixed_vs_good_only": round(mix["good_p50_ms"] / base["good_p50_ms"], 2),
        "p99_ratio_mixed_vs_good_only": round(mix["good_p99_ms"] / base["good_p99_ms"], 2),
        "seconds": round(time.monotonic() - started, 1),
    }


def print_table(r: dict[str, Any]) -> None:
    kinds = ", ".join(r["hostile_kinds"])
    print(f"\nconcurrency {r['concurrency']}, {r['rounds']} interleaved rounds, "
          f"{r['seconds']:.0f} s in all; hostile kinds: {kinds}\n")  # fmt: skip
    line = "{:<10} {:>14} {:>14} {:>9} {:>9}"
    print(line.format("workload", "good ok/sent", "bad ok/sent", "p50 ms", "p99 ms"))
    for name, w in r["workloads"].items():
        bad = f"{w['bad_ok']}/{w['bad_sent']}" if w["bad_sent"] else "-"
        print(line.format(name, f"{w['good_ok']}/{w['good_sent']}", bad, w["good_p50_ms"],
                          w["good_p99_ms"]))  # fmt: skip
        for wrong in w["wrong_sample"]:
            print(f"    wrong: {wrong}")
    print(f"\nworker restarts: {r['worker_restarts']}")
    print(f"good requests' p50 mixed / good only: {r['p50_ratio_mixed_vs_good_only']}x, "
          f"p99: {r['p99_ratio_mixed_vs_good_only']}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--repeat", type=int, default=4, help="good probe repeats per round")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
