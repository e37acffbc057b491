"""benchmarks/serving.py: reading TorchServe's per-request worker time from its metrics log."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_serving", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# Lines as TorchServe 0.12 writes them to model_metrics.log (metrics_mode=log): one per
# batch, the batch's request ids joined with commas.
LOG = "".join(
    f"2026-11-30T09:23:35,056 - {metric}.ms:{ms}|#ModelName:{model},Level:Model|"
    f"#hostname:vm,requestID:{ids},timestamp:1796030615\n"
    for metric, ms, model, ids in [
        ("PredictionTime", "27.12", "embed", "deebce7f-ad3c-4650-a4f6-11e56a1b2e72"),
        ("HandlerTime", "26.5", "embed", "deebce7f-ad3c-4650-a4f6-11e56a1b2e72"),
        ("PredictionTime", "41.0", "insights", "aa11-bb22,cc33-dd44"),
    ]
)


def test_prediction_times_maps_every_request_of_a_batch_to_its_worker_time() -> None:
    times = _load_benchmark().prediction_times(LOG)
    assert times == {
        "deebce7f-ad3c-4650-a4f6-11e56a1b2e72": 27.12,
        "aa11-bb22": 41.0,
        "cc33-dd44": 41.0,
    }


def _cell(benchmark: ModuleType, ids: list[str], ms: list[float]) -> Any:
    return benchmark.Cell(
        server="TorchServe", kind="torchserve", task="embed", concurrency=1,
        requests=len(ids), p50_ms=None, p99_ms=None, throughput_rps=None, errors=0,
        background_cores=0.0, client_ms_by_request_id=dict(zip(ids, ms, strict=True)),
    )  # fmt: skip


def test_each_request_is_split_into_handler_time_and_the_rest() -> None:
    benchmark = _load_benchmark()
    ids = [f"id-{i}" for i in range(20)]
    cell = _cell(benchmark, ids, [25.0 + i for i in range(20)])
    benchmark.split_by_handler(cell, {i: 20.0 for i in ids})
    assert cell.handler_matched == 20
    assert cell.handler_p50_ms == 20.0
    assert cell.outside_handler_p50_ms == 14.5  # median of 5.0 .. 24.0


def test_no_split_when_requests_are_missing_from_the_metrics_log() -> None:
    benchmark = _load_benchmark()
    ids = [f"id-{i}" for i in range(20)]
    cell = _cell(benchmark, ids, [25.0] * 20)
    benchmark.split_by_handler(cell, {i: 20.0 for i in ids[:18]})  # 90% matched
    assert cell.handler_matched == 18
    assert cell.handler_p50_ms is None and cell.outside_handler_p50_ms is None


def test_variants_next_to_the_configured_settings() -> None:
    benchmark = _load_benchmark()
    from dualmedia.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, serving_batch_size=8, serving_max_batch_delay_ms=1,
        serving_workers=2, serving_threads=1,
    )  # fmt: skip
    configs = benchmark.configurations(settings, ["nowait", "w2t1", "delay5"])
    # w2t1 is the configured split with the configured batching: measured once, not twice.
    assert [c.key for c in configs] == ["configured", "nowait", "delay5"]
    nowait = configs[1]
    assert (nowait.batch_size, nowait.max_batch_delay_ms, nowait.workers) == (2, 0, 2)
    assert configs[0].model_name("embed") == "embed"
    assert nowait.model_name("embed") == "nowait-embed"  # the handler reads the task last
