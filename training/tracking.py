"""MLflow bookkeeping of a training: one parent run, nested stage runs, inputs, tags, params.

Runs are created (or, on resume, re-opened by id) only by the first process of a
distributed job; the others train without tracking. Params come from the training config
and the snapshot, never from Settings (which hold secrets).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot, SnapshotArrays
from training.checkpoints import RunState
from training.config import TrainConfig, flatten

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_PARAM_CHARS = 500
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow UI's own tag and value
MODEL_TRAINING = "custom_model_development"


def git_commit() -> str | None:
    """The checked-out commit of the code that trains, when it runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and len(sha) == 40 else None


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's route (after the server's `/`) of an experiment or one of its runs,
    in the model-training view: MLflow 3 opens in its GenAI view unless the link says."""
    run = f"/runs/{run_id}" if run_id else ""
    return f"#/experiments/{experiment_id}{run}?workflowType=machine_learning"


def quiet_mlflow() -> None:
    """MLflow prints run URLs to stdout, which must stay clean for `--json` output; these
    are MLflow's own switches, set only where the user has not set them."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def configure(settings: Settings, config: TrainConfig) -> None:
    quiet_mlflow()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    experiment = mlflow.set_experiment(settings.mlflow_experiment)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        # MLflow 3 opens an experiment without this tag in its GenAI view, where a training
        # run is listed under "Evaluation runs"; this kind opens the model-training view.
        mlflow.MlflowClient(settings.mlflow_uri).set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING
        )
    mlflow.system_metrics.set_system_metrics_sampling_interval(
        config.tracking.system_metrics_interval_s
    )
    mlflow.system_metrics.set_system_metrics_samples_before_logging(1)


def training_params(config: TrainConfig, snapshot: Snapshot) -> dict[str, str]:
    params: dict[str, Any] = flatten(config.model_dump(mode="json"))
    params.update(flatten(snapshot.media.to_dict(), "media."))
    params.update(
        {
            "snapshot.uri": str(snapshot.uri),
            "snapshot.id": snapshot.id,
            "dataset": snapshot.spec.name,
            "config.digest": config.digest(),
        }
    )
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()}


def split_frame(arrays: SnapshotArrays) -> pd.DataFrame:
    """What MLflow records about a split: ids, modality presence and labels (no media)."""
    data: dict[str, Any] = {"id": arrays.ids}
    for modality, mask in arrays.present.items():
        data[f"has_{modality}"] = mask.astype(bool)
    for name, values in arrays.labels.items():
        # Floats with NaN for a missing label (-1): integer columns cannot say "missing".
        data[f"label_{name}"] = np.where(values >= 0, values, np.nan).astype(np.float64)
    return pd.DataFrame(data)


def log_snapshot_inputs(snapshot: Snapshot, splits: dict[str, SnapshotArrays]) -> None:
    for split, arrays in splits.items():
        dataset = mlflow.data.from_pandas(
            split_frame(arrays),
            source=str(snapshot.uri),
            name=f"{snapshot.spec.name}-{split}",
            digest=snapshot.id[:32],
        )
        mlflow.log_input(
            dataset,
            context=split,
            tags={
                "snapshot_id": snapshot.id,
                "snapshot_uri": str(snapshot.uri),
                "split": split,
                "records": str(len(arrays)),
            },
        )


@contextmanager
def parent_run(
    settings: Settings,
    config: TrainConfig,
    state: RunState,
    snapshot: Snapshot,
    splits: dict[str, SnapshotArrays],
    enabled: bool,
) -> Iterator[str | None]:
    """The training's parent run: created with params, tags and inputs, or re-opened."""
    if not enabled:
        yield None
        return
    configure(settings, config)
    is_new = state.parent_run_id is None
    with mlflow.start_run(
        run_id=state.parent_run_id, run_name=state.run_name, log_system_metrics=True
    ) as run:
        if is_new:
            mlflow.log_params(training_params(config, snapshot))
            tags = {
                "dualmedia.stage": "training",
                "dualmedia.snapshot_id": snapshot.id,
                "dualmedia.snapshot_uri": str(snapshot.uri),
                "dualmedia.dataset": snapshot.spec.name,
                "dualmedia.run_name": state.run_name,
            }
            commit = git_commit()
            if commit:
                tags["mlflow.source.git.commit"] = commit
            mlflow.set_tags(tags)
            log_snapshot_inputs(snapshot, splits)
        yield run.info.run_id


@contextmanager
def stage_run(state: RunState, stage: str, enabled: bool) -> Iterator[str | None]:
    """A nested run for one stage (re-opened by id on resume)."""
    if not enabled:
        yield None
        return
    with mlflow.start_run(
        run_id=state.stage_run_ids.get(stage),
        run_name=stage,
        nested=True,
        log_system_metrics=True,
    ) as run:
        mlflow.set_tag("dualmedia.stage", stage)
        yield run.info.run_id
