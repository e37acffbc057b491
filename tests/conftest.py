"""Shared fixtures: settings pointing at private, temporary local stacks on free ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualmedia.settings import Settings
from dualmedia.stack import Stack

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free right now on loopback and not handed out before in this session."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a private stack under `home`; ignores the developer's .env."""
    values: dict[str, object] = {
        "home": home,
        "s3_port": free_port(),
        "mlflow_port": free_port(),
        "airflow_port": free_port(),
        "airflow_worker_log_port": free_port(),
        "airflow_trigger_log_port": free_port(),
        "torchserve_inference_port": free_port(),
        "torchserve_management_port": free_port(),
        "torchserve_metrics_port": free_port(),
        "torchserve_grpc_inference_port": free_port(),
        "torchserve_grpc_management_port": free_port(),
        "startup_timeout_s": 240.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "stack")


@pytest.fixture(scope="session")
def s3_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real rclone S3 server for the whole test session (object storage only)."""
    s = make_settings(tmp_path_factory.mktemp("s3stack"))
    stack = Stack(s, only=["s3"])
    stack.up()
    yield s
    stack.down()
