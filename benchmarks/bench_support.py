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
