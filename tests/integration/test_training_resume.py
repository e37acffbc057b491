"""A training process killed mid-epoch (SIGKILL, after its first checkpoint reached object
storage) resumes from that checkpoint's global step and in the same MLflow runs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore, S3Uri
from synthetic.fixtures import synthetic_snapshot
from tests.conftest import make_settings
from training.checkpoints import RunState
from training.config import REPO_CONFIGS, TrainConfig, load_train_config
from training.train import train

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "resume-test"
CHECKPOINT_EVERY = 3
STALL_AT_STEP = 5  # mid-epoch 2 of the alignment stage, after the checkpoint at step 3

# The child trains normally until STALL_AT_STEP, then says so and hangs: the test kills it
# there, so the kill lands mid-epoch after a checkpoint, without racing the training.
CHILD = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    import pytorch_lightning as pl
    from dualmedia.settings import Settings
    from training.config import TrainConfig
    from training.train import train

    class Stall(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= {STALL_AT_STEP}:
                Path(sys.argv[3]).write_text(str(trainer.global_step))
                time.sleep(600)

    config = TrainConfig.model_validate_json(Path(sys.argv[2]).read_text())
    train(sys.argv[1], config, Settings(), progress=False, callbacks=[Stall()])
    """
)


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("resume-stack"))
    stack = Stack(settings, only=["s3", "mlflow"])
    stack.up()
    yield settings
    stack.down()


def resume_config() -> TrainConfig:
    data = load_train_config(REPO_CONFIGS / "tiny.yaml").model_dump()
    data["run_name"] = RUN_NAME
    data["alignment"]["epochs"] = 3
    data["fusion"]["epochs"] = 1
    data["checkpoint"]["every_n_steps"] = CHECKPOINT_EVERY
    return TrainConfig.model_validate(data)


def checkpoint_step(store: ObjectStore, uri: S3Uri) -> int:
    data = io.BytesIO(store.read_bytes(uri))
    return int(torch.load(data, map_location="cpu", weights_only=False)["global_step"])


def test_killed_training_resumes_from_its_last_checkpoint(
    stack_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(stack_settings)
    snapshot = synthetic_snapshot(store, stack_settings.lake_bucket, tmp_path, 80, seed=2)
    config = resume_config()
    (tmp_path / "config.json").write_text(config.model_dump_json())
    (tmp_path / "child.py").write_text(CHILD)
    stalled = tmp_path / "stalled"
    env = {**os.environ, **stack_settings.child_env(), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "child.py"),
            snapshot,
            str(tmp_path / "config.json"),
            str(stalled),
        ],
        cwd=tmp_path,  # no developer .env
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "child.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 300
        while not stalled.exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the training never reached the stall step"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    root = S3Uri(stack_settings.lake_bucket, f"checkpoints/{RUN_NAME}")
    saved_step = checkpoint_step(store, root.join("alignment", "last.ckpt"))
    assert 0 < saved_step < STALL_AT_STEP
    before = RunState.load(store, root)
    assert before is not None and not before.finished and before.completed_stages == []
    client = MlflowClient(stack_settings.mlflow_uri)
    assert client.get_run(before.parent_run_id).info.status == "RUNNING"  # killed, not ended

    summary = train(snapshot, config, stack_settings, resume=True, progress=False)

    alignment = summary["stages"]["alignment"]
    assert summary["resumed"] is True
    assert alignment["resumed_from_step"] == saved_step  # not 0
    # It ends where an uninterrupted run ends (3 epochs of full batches of 16), so the
    # resumed epoch continued rather than starting over.
    assert alignment["global_step"] == 3 * (summary["counts"]["train"] // 16)
    assert summary["parent_run_id"] == before.parent_run_id
    assert summary["child_run_ids"]["alignment"] == before.stage_run_ids["alignment"]
    mlflow.set_tracking_uri(stack_settings.mlflow_uri)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    # One alignment run holds the steps logged before the kill and after the resume.
    steps = [
        m.step for m in client.get_metric_history(before.stage_run_ids["alignment"], "train/loss")
    ]
    assert min(steps) < saved_step < max(steps)
    # Resuming a finished run does no new work.
    again = train(snapshot, config, stack_settings, resume=True, progress=False)
    assert again["reused"] is True and again["model_uri"] == summary["model_uri"]
