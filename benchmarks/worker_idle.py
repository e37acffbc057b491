"""The same forward, called back to back vs the way a TorchServe worker at concurrency 1 sees it.

benchmarks/serving.py compares a served `embed` with the in-process call, which runs back
to back and keeps its core busy. A worker at concurrency 1 instead waits between requests,
and with two workers lone requests take turns (TorchServe hands each one to the worker
that has waited longest). This measures the one call (parse + InferenceRuntime.answer on
one text, the default architecture, 1 torch thread) in fresh processes:

  - back to back (what the serving benchmark's in-process row measures),
  - with an idle gap between calls (the time a lone worker waits for the next request),
  - two processes taking turns, free to run on any core (two workers at concurrency 1),
  - two processes taking turns, both pinned to core 0.

Each mode runs in interleaved rounds and prints its p50 and its ratio to back to back. No
HTTP, no TorchServe: what is left is the cost of idling and of switching processes on
this machine, which a served request pays on top of TorchServe's own.

    .venv/bin/python benchmarks/worker_idle.py [--requests 150] [--rounds 2] [--json]

About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _serving_benchmark() -> ModuleType:
    """benchmarks/serving.py, for its model and its in-process call (its file name would
    hide the `serving` package from a plain import)."""
    spec = importlib.util.spec_from_file_location("benchmark_serving", HERE / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def load_call(model_dir: Path) -> Callable[[], float]:
    """serving.py's in-process call (parse + InferenceRuntime.answer of one unique text,
    1 thread), warmed up; each call returns its seconds."""
    warnings.filterwarnings("ignore")
    from serving.runtime import InferenceRuntime

    bench = _serving_benchmark()
    endpoint = bench.InProcessEndpoint(
        InferenceRuntime.from_folder(model_dir, "1", threads=1), 1, bench.Bodies()
    )

    def call() -> float:
        return endpoint.measure("embed", endpoint.payloads("embed", 1), 1, math.inf).latencies[0]

    for _ in range(20):
        call()
    return call


def alone(model_dir: Path, n: int, gap_s: float, out: Any) -> None:
    call = load_call(model_dir)
    times = []
    for _ in range(n):
        times.append(call())
        if gap_s:
            time.sleep(gap_s)
    out.put(times)


def taking_turns(
    model_dir: Path, me: int, n: int, mine: Connection, theirs: Connection, pin: bool, out: Any
) -> None:
    if pin:
        os.sched_setaffinity(0, {0})
    call = load_call(model_dir)
    times = []
    if me == 1:
        theirs.send(None)  # process 0 goes first
    for _ in range(n):
        mine.recv()
        times.append(call())
        theirs.send(None)
    out.put(times)


def run_mode(model_dir: Path, mode: str, n: int, gap_ms: float) -> list[float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    if mode in ("back to back", "idle gap"):
        gap = gap_ms / 1000 if mode == "idle gap" else 0.0
        p = ctx.Process(target=alone, args=(model_dir, n, gap, out))
        p.start()
        times = out.get()
        p.join()
        return times
    to_0_recv, to_0_send = ctx.Pipe(duplex=False)
    to_1_recv, to_1_send = ctx.Pipe(duplex=False)
    pin = mode == "taking turns, one core"
    ends = [(to_0_recv, to_1_send), (to_1_recv, to_0_send)]  # (mine, theirs)
    procs = [
        ctx.Process(target=taking_turns, args=(model_dir, me, n // 2, *ends[me], pin, out))
        for me in (0, 1)
    ]
    for p in procs:
        p.start()
    times = out.get() + out.get()
    for p in procs:
        p.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=150, help="calls per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--gap-ms", type=float, default=15.0, help="idle gap between calls")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    modes = ["back to back", "idle gap", "taking turns", "taking turns, one core"]
    if len(os.sched_getaffinity(0)) < 2:
        modes.remove("taking turns, one core")  # the same as "taking turns" on one core
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-idle-") as tmp:
        # The default architecture, random weights: speed does not depend on training.
        model_dir, _, _ = _serving_benchmark().build_model(Path(tmp))
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                print(f"round {r + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
                times[mode] += run_mode(model_dir, mode, args.requests, args.gap_ms)
    base = float(np.percentile(times["back to back"], 50))
    rows = [
        {
            "mode": mode + (f" ({args.gap_ms:g} ms)" if mode == "idle gap" else ""),
            "calls": len(t),
            "p50_ms": round(float(np.percentile(t, 50)) * 1000, 2),
            "vs_back_to_back": round(float(np.percentile(t, 50)) / base, 2),
        }
        for mode, t in times.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'mode':<30} {'calls':>5} {'p50 ms':>8} {'vs back to back':>16}")
    for row in rows:
        print(
            f"{row['mode']:<30} {row['calls']:>5} {row['p50_ms']:>8.2f} "
            f"{row['vs_back_to_back']:>15.2f}x"
        )


if __name__ == "__main__":
    main()
