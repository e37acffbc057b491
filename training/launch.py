"""Training in several processes on this machine, started by torchrun.

    run_training(snapshot_uri, config, settings, ...) -> the summary `train` returns

When the configuration asks for several processes on this node (`hardware.strategy`
ddp, `devices` N > 1) and this process is not already one of a launched group, this
starts `python -m torch.distributed.run --standalone --nproc-per-node N -m
training.launch <request>`; every process calls `train`, Lightning sees the TorchElastic
environment and joins the group (it launches nothing itself), and the first process
writes the summary that this returns. Otherwise it calls `train` here.

Why torchrun and not Lightning's own launcher: Lightning re-executes `sys.argv`, which in
an Airflow task is the Celery worker's command line. torchrun runs the module named here,
and it is the same launcher the multi-node recipe uses on each node (infra/k8s/), so one
way starts every distributed run. Several nodes need a torchrun per node; one process
cannot start processes on other machines, so that is refused here with the recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import torch

from dualmedia.settings import Settings, get_settings
from training.config import HardwareConfig, TrainConfig

# Set by torchrun (and by Lightning's, SLURM's and Kubernetes' launchers): this process is
# one of a group already.
LAUNCHED = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID")


class LaunchError(RuntimeError):
    """The distributed run failed; the message holds the end of its output."""


def processes_per_node(hardware: HardwareConfig) -> int:
    """How many training processes this node needs for the configuration."""
    if not hardware.strategy.startswith("ddp"):
        return 1
    if isinstance(hardware.devices, int):
        return hardware.devices
    gpu = hardware.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.cuda.device_count() if gpu else 1


def needs_launch(hardware: HardwareConfig) -> bool:
    """Several processes asked for, and this process is not one of them yet."""
    launched = any(v in os.environ for v in LAUNCHED)
    if launched:
        return False
    if hardware.num_nodes > 1:
        raise ValueError(
            f"num_nodes={hardware.num_nodes}: start `torchrun --nnodes {hardware.num_nodes} "
            "--nproc-per-node <devices> --rdzv-backend c10d --rdzv-endpoint <host:port> -m "
            "dualmedia.cli train ...` on every node (recipe: infra/k8s/train-job.yaml); one "
            "process cannot start the others"
        )
    return processes_per_node(hardware) > 1


def run_training(
    snapshot_uri: str,
    config: TrainConfig,
    settings: Settings,
    resume: bool = False,
    progress: bool = True,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """`train`, in as many processes as the configuration asks for."""
    from training.train import train

    if not needs_launch(config.hardware):
        return train(snapshot_uri, config, settings, resume, progress, stop_after=stop_after)
    nproc = processes_per_node(config.hardware)
    with tempfile.TemporaryDirectory(prefix="dualmedia-launch-") as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "snapshot_uri": snapshot_uri,
                    "config": config.model_dump(mode="json"),
                    "resume": resume,
                    "progress": progress,
                    "stop_after": stop_after,
                    "result": str(result),
                }
            )
        )
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "training.launch",
            str(request),
        ]  # fmt: skip
        env = {**os.environ, **settings.child_env()}
        # One thread per process unless configured: N processes share the node's cores.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        tail: deque[str] = deque(maxlen=30)
        with subprocess.Popen(
            command,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # the processes' log goes to ours (stderr), as it comes
                sys.stderr.write(line)
                tail.append(line)
        if proc.returncode != 0 or not result.exists():
            raise LaunchError(
                f"distributed training ({nproc} processes via torchrun) exited with "
                f"{proc.returncode}; the end of its log:\n" + "".join(tail)
            )
        return json.loads(result.read_text())


def _main(request_path: str) -> None:
    """One process of a launched group (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK...)."""
    from training.train import train

    request = json.loads(Path(request_path).read_text())
    config = TrainConfig.model_validate(request["config"])
    summary = train(
        request["snapshot_uri"],
        config,
        get_settings(),
        resume=request["resume"],
        progress=request["progress"],
        stop_after=request["stop_after"],
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(request["result"]).write_text(json.dumps(summary, default=str))


if __name__ == "__main__":
    _main(sys.argv[1])
