"""No code from storage, end to end: whoever can write the lake bucket plants a tampered
checkpoint or run state where `train(resume=True)` reads it (real rclone S3 and MLflow);
the resume refuses it with a clear error and nothing in it runs."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore, S3Uri
from synthetic.fixtures import synthetic_snapshot
from tests.conftest import make_settings
from training.checkpoints import CheckpointRefused, RunState
from training.config import REPO_CONFIGS, TrainConfig, load_train_config
from training.train import train

pytestmark = pytest.mark.integration
RUN_NAME = "tampered-run"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("tamper-stack"))
    stack = Stack(settings, only=["s3", "mlflow"])
    stack.up()
    yield settings
    stack.down()


@pytest.fixture(scope="module")
def snapshot(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    store = ObjectStore(stack_settings)
    folder = tmp_path_factory.mktemp("tamper-data")
    return synthetic_snapshot(store, stack_settings.lake_bucket, folder, 40, seed=3)


def config() -> TrainConfig:
    data = load_train_config(REPO_CONFIGS / "tiny.yaml").model_dump()
    data["run_name"] = RUN_NAME
    return TrainConfig.model_validate(data)


def test_resume_refuses_a_tampered_checkpoint_without_running_it(
    stack_settings: Settings, snapshot: str, tmp_path: Path
) -> None:
    store = ObjectStore(stack_settings)
    root = S3Uri(stack_settings.lake_bucket, f"checkpoints/{RUN_NAME}")
    store.delete_prefix(root)
    # A run state that matches (so resume goes on to the checkpoint) and a planted one.
    RunState(RUN_NAME, snapshot, config().digest()).save(store, root)
    marker = tmp_path / "pwned.txt"
    planted = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "x": Payload(marker)}, planted)
    store.upload_file(planted, root.join("alignment", "last.ckpt"))

    with pytest.raises(CheckpointRefused, match="refused to load this checkpoint"):
        train(snapshot, config(), stack_settings, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        {"run_name": RUN_NAME, "snapshot_uri": 1, "config_digest": "d"},  # wrong type
        {"run_name": RUN_NAME, "snapshot_uri": "s", "config_digest": "d", "py/object": "x"},
        {
            "run_name": RUN_NAME,
            "snapshot_uri": "s",
            "config_digest": "d",
            "completed_stages": ["../../other-run"],
        },
    ],
)
def test_resume_refuses_a_run_state_that_is_not_valid_data(
    stack_settings: Settings, snapshot: str, content: dict[str, Any]
) -> None:
    store = ObjectStore(stack_settings)
    root = S3Uri(stack_settings.lake_bucket, f"checkpoints/{RUN_NAME}")
    store.write_bytes(root.join("run.json"), json.dumps(content).encode())
    with pytest.raises(CheckpointRefused, match="not a valid run state"):
        train(snapshot, config(), stack_settings, resume=True, progress=False)
    store.write_bytes(root.join("run.json"), pickle.dumps(content))  # not even JSON
    with pytest.raises(CheckpointRefused, match="not a valid run state"):
        RunState.load(store, root)
