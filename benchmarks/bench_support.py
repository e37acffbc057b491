"""What several benchmark scripts share."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def serving_benchmark() -> Any:
    """benchmarks/serving.py as a module (its name would hide the `serving` package):
    private settings, the default model's archive, a private TorchServe, the load client."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_serving", REPO / "benchmarks" / "serving.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def private_settings(home: Path) -> Any:
    """Settings for one run's own services: a temp home, free ports, no .env."""
    import socket

    from dualmedia.settings import Settings

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    names = [
        "s3_port",
        "mlflow_port",
        "airflow_port",
        "airflow_worker_log_port",
        "airflow_trigger_log_port",
        "torchserve_inference_port",
        "torchserve_management_port",
        "torchserve_metrics_port",
        "torchserve_grpc_inference_port",
        "torchserve_grpc_management_port",
    ]
    ports = {name: free_port() for name in names}
    return Settings(_env_file=None, home=home, startup_timeout_s=240.0, **ports)  # type: ignore[call-arg]
