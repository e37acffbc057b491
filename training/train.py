"""The training entry point: a snapshot in, an aligned + fused model in MLflow out.

    train(snapshot_uri, config, settings, resume=False) -> summary (JSON-able)

Stage 1 (`alignment`) trains the encoders contrastively on every modality pair; stage 2
(`fusion`) trains the fusion and unimodal heads on the labels, fine-tuning the encoders.
Each stage is a nested MLflow run under one parent run; checkpoints go to
s3://<lake>/checkpoints/<run-name>/ every N steps. With `resume=True` a killed training
continues from its last checkpoint and re-opens the same MLflow runs; a finished one
returns its summary without training again.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from dualmedia.settings import Settings
from dualmedia.snapshot import SPLITS, Snapshot, SnapshotArrays
from dualmedia.storage import ObjectStore, S3Uri
from training.callbacks import ConsoleProgress, KeepBest
from training.checkpoints import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    ObjectStoreCheckpointIO,
    RunState,
    download_checkpoint,
    load_checkpoint,
)
from training.config import HardwareConfig, StageConfig, TrainConfig
from training.data import SnapshotDataModule
from training.evaluate import evaluate_arrays, flat_metrics
from training.lit import AlignmentModule, FusionModule, label_class_counts
from training.models.distributed import is_launcher_rank_zero
from training.models.factory import FusedModel, build_fused_model, save_fused_model
from training.models.pyfunc import (
    PYFUNC_ENTRY,
    code_paths,
    input_example,
    model_signature,
    pip_requirements,
)
from training.tracking import parent_run, stage_run

STAGES = ("alignment", "fusion")


def default_run_name(snapshot: Snapshot, config: TrainConfig) -> str:
    return f"{snapshot.spec.name}-{snapshot.id[:10]}-{config.digest()[:8]}"


def precision_for(hardware: HardwareConfig) -> str:
    """bf16 mixed precision on GPUs, full precision on CPU (unless the config says)."""
    if hardware.precision:
        return hardware.precision
    gpu = torch.cuda.is_available() and hardware.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def _quiet_libraries() -> None:
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # One process on two CPU cores: loader workers would only compete with the model.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # A frozen pretrained trunk is kept in eval mode on purpose (no dropout: cacheable).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Validation metrics cover the whole split on every rank: nothing to synchronise.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")
    # Each attempt writes its local checkpoint copies to a fresh temporary folder.
    warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")


def _checkpoint_step(path: Path) -> int:
    # Read back from object storage: tensors and plain data only (CheckpointRefused else).
    return int(load_checkpoint(path)["global_step"])


def _load_weights(module: pl.LightningModule, path: Path) -> None:
    checkpoint = load_checkpoint(path)  # weights_only=True: nothing in it is run
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])


@dataclass
class _Run:
    """Everything the stages of one training share."""

    config: TrainConfig
    settings: Settings
    store: ObjectStore
    root: S3Uri
    workdir: Path
    state: RunState
    rank0: bool
    resuming: bool
    progress: bool
    datamodule: SnapshotDataModule
    extra_callbacks: list[Callback] = field(default_factory=list)

    def trainer(
        self, stage: str, stage_config: StageConfig, run_id: str | None, keep_best: KeepBest
    ) -> pl.Trainer:
        hw = self.config.hardware
        ckpt_dir = self.workdir / stage
        callbacks: list[Callback] = [
            keep_best,
            ModelCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=self.config.checkpoint.every_n_steps,
                save_top_k=0,
                save_last=True,
            ),
            *self.extra_callbacks,
        ]
        logger: MLFlowLogger | bool = False
        if run_id is not None:
            logger = MLFlowLogger(
                experiment_name=self.settings.mlflow_experiment,
                tracking_uri=self.settings.mlflow_uri,
                run_id=run_id,
            )
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.progress:
            callbacks.append(ConsoleProgress(stage))
        return pl.Trainer(
            accelerator=hw.accelerator,
            devices=hw.devices,
            num_nodes=hw.num_nodes,
            strategy=hw.strategy,
            precision=precision_for(hw),  # type: ignore[arg-type]
            max_epochs=stage_config.epochs,
            logger=logger,
            callbacks=callbacks,
            plugins=[ObjectStoreCheckpointIO(self.store, self.workdir, self.root)],
            default_root_dir=self.workdir,
            log_every_n_steps=self.config.tracking.log_every_n_steps,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # BalancedSampler shards by rank itself
        )

    def run_stage(
        self, stage: str, module: pl.LightningModule, stage_config: StageConfig, run_id: str | None
    ) -> dict[str, Any]:
        """Fit one stage (resuming from its last checkpoint), or restore it when done."""
        if stage in self.state.completed_stages:
            final = download_checkpoint(
                self.store, self.root, stage, FINAL_CHECKPOINT, self.workdir
            )
            if final is None:
                raise ValueError(
                    f"{self.root}: stage {stage} is marked done but has no final checkpoint"
                )
            _load_weights(module, final)
            return {**self.state.stage_results.get(stage, {}), "restored": True}
        last = None
        if self.resuming:
            last = download_checkpoint(self.store, self.root, stage, LAST_CHECKPOINT, self.workdir)
        resumed_from = _checkpoint_step(last) if last else 0
        keep_best = KeepBest(*module.selection)
        trainer = self.trainer(stage, stage_config, run_id, keep_best)
        started = time.monotonic()
        trainer.fit(module, datamodule=self.datamodule, ckpt_path=last)
        trainer.save_checkpoint(self.workdir / stage / FINAL_CHECKPOINT)
        result = {
            "global_step": int(trainer.global_step),
            "resumed_from_step": resumed_from,
            "epochs": int(trainer.current_epoch),
            "seconds": round(time.monotonic() - started, 1),
            "world_size": int(trainer.world_size),  # processes that trained it (DDP)
            "positives": module.positives,  # "dataset" resolved
            **keep_best.summary(),
        }
        if self.rank0:
            self.state.completed_stages.append(stage)
            self.state.stage_results[stage] = result
            self.state.save(self.store, self.root)
        return result


def _log_model(model: FusedModel, run: _Run, example: SnapshotArrays) -> str:
    files = save_fused_model(model, run.workdir / "model")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_ENTRY),  # models from code: no pickled Python object
        artifacts={"weights": str(files["weights"]), "config": str(files["config"])},
        signature=model_signature(model),
        input_example=input_example(example),
        pip_requirements=pip_requirements(),
        code_paths=code_paths(run.workdir / "code"),
    )
    return info.model_uri


def _evaluate_and_log(model: FusedModel, run: _Run, splits: dict[str, SnapshotArrays]) -> dict:
    split = "test" if len(splits["test"]) else "val"
    if not len(splits[split]):
        return {}
    plots = run.workdir / "plots"
    result = evaluate_arrays(model, splits[split], run.config.eval, plots_dir=plots)
    metrics = flat_metrics(result, prefix=split)
    mlflow.log_metrics(metrics)
    mlflow.log_dict(result, "evaluation.json")
    mlflow.log_artifacts(str(plots), "plots")
    return metrics


def key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The figures people compare runs by: retrieval, fusion, its gain, the ablations."""
    keep = (
        "/retrieval/",
        "/fusion/",
        "/gain/",
        "/ablation/only_",
        "/ablation/with_",
        "/zero_shot/",
    )
    return {
        k: round(v, 4)
        for k, v in metrics.items()
        if any(part in k for part in keep) and not k.endswith("/n")
    }


def train(
    snapshot_uri: str,
    config: TrainConfig,
    settings: Settings,
    resume: bool = False,
    progress: bool = True,
    *,
    callbacks: list[Callback] | None = None,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """Train on a snapshot; returns run ids, the model URI and key test metrics.

    `callbacks` are extra Lightning callbacks for both stages (tests use one to stop a run).
    `stop_after="alignment"` ends after the alignment stage (its checkpoint saved); a
    later call with `resume=True` restores it and trains fusion. The DAG runs the two
    stages as two tasks this way.
    """
    if stop_after not in (None, "alignment", "fusion"):
        raise ValueError(f"stop_after must be 'alignment' or 'fusion', got {stop_after!r}")
    _quiet_libraries()
    started = time.monotonic()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if config.hardware.threads:
        torch.set_num_threads(config.hardware.threads)
    store = ObjectStore(settings)
    snapshot = Snapshot(store, snapshot_uri)
    splits = {split: snapshot.arrays(split) for split in SPLITS}
    if len(splits["train"]) < 2:
        raise ValueError(f"{snapshot_uri}: the train split has {len(splits['train'])} items")
    run_name = config.run_name or default_run_name(snapshot, config)
    root = S3Uri(settings.lake_bucket, f"checkpoints/{run_name}")
    rank0 = is_launcher_rank_zero()
    state = RunState.load(store, root) if resume else None
    if state is not None:
        state.check_matches(str(snapshot.uri), config.digest())
        if state.finished and state.summary is not None:
            return {**state.summary, "reused": True}
    resuming = state is not None
    if state is None:
        state = RunState(run_name, str(snapshot.uri), config.digest())
        if rank0:
            store.ensure_bucket(settings.lake_bucket)
            store.delete_prefix(root)  # a fresh start never mixes with an older attempt

    model = build_fused_model(snapshot.spec, snapshot.media, config.model, snapshot.bounds)
    for m in model.modalities:  # e.g. the audio trunk's input normalisation
        model.encoder.trunk(m).prepare([x for x in splits["train"].inputs[m] if x is not None])
    datamodule = SnapshotDataModule(
        splits["train"],
        splits["val"],
        snapshot.spec,
        model.modalities,
        config.data,
        snapshot.media,
        config.seed,
    )
    with (
        tempfile.TemporaryDirectory(prefix="dualmedia-train-") as tmp,
        parent_run(settings, config, state, snapshot, splits, rank0) as parent_id,
    ):
        run = _Run(
            config,
            settings,
            store,
            root,
            Path(tmp),
            state,
            rank0,
            resuming,
            progress,
            datamodule,
            list(callbacks or []),
        )
        if rank0:
            state.parent_run_id = parent_id
            state.save(store, root)
        stages: dict[str, Any] = {}
        with stage_run(state, "alignment", rank0) as align_id:
            if rank0 and align_id:
                state.stage_run_ids["alignment"] = align_id
                state.save(store, root)
            module = AlignmentModule(model, config.alignment, datamodule.primary_label)
            stages["alignment"] = run.run_stage("alignment", module, config.alignment, align_id)
        if stop_after == "alignment":
            return {
                "run_name": run_name,
                "parent_run_id": parent_id,
                "child_run_ids": dict(state.stage_run_ids),
                "snapshot_uri": str(snapshot.uri),
                "checkpoint_uri": str(root),
                "stages": stages,
                "finished": False,
            }
        with stage_run(state, "fusion", rank0) as fusion_id:
            if rank0 and fusion_id:
                state.stage_run_ids["fusion"] = fusion_id
                state.save(store, root)
            counts = label_class_counts(splits["train"].labels, model.classes)
            module = FusionModule(model, config.fusion, counts, datamodule.primary_label)
            stages["fusion"] = run.run_stage("fusion", module, config.fusion, fusion_id)
            if not rank0:
                return {}
            metrics = _evaluate_and_log(model, run, splits)
        # The model hangs on the parent run, the one people open: it lists the logged
        # model, and the registered versions link back to it.
        model_uri = _log_model(model, run, splits["test"] if len(splits["test"]) else splits["val"])
        summary_metrics = key_metrics(metrics)
        mlflow.log_metrics({k: v for k, v in summary_metrics.items() if "/fusion/" in k})
        mlflow.set_tag("dualmedia.model_uri", model_uri)
        summary = {
            "run_name": run_name,
            "parent_run_id": parent_id,
            "child_run_ids": dict(state.stage_run_ids),
            "model_uri": model_uri,
            "snapshot_uri": str(snapshot.uri),
            "snapshot_id": snapshot.id,
            "checkpoint_uri": str(root),
            "counts": {split: len(arrays) for split, arrays in splits.items()},
            "stages": stages,
            "resumed": resuming,
            "seconds": round(time.monotonic() - started, 1),
            "metrics": summary_metrics,
        }
        state.finished = True
        state.summary = summary
        state.save(store, root)
        return summary


def train_from_params(
    snapshot_uri: str, params: dict[str, Any], settings: Settings, **kwargs: Any
) -> dict[str, Any]:
    """`train` as a pipeline run asks for it: a named configuration with the run's
    overrides (train_config, epochs, batch_size, fusion_type), resumable, no console bars,
    in as many processes as its `hardware` asks for (training.launch)."""
    from training.config import named_config
    from training.launch import run_training

    config = named_config(
        params["train_config"], params.get("epochs"), params.get("batch_size"),
        params.get("fusion_type"),
    )  # fmt: skip
    return run_training(snapshot_uri, config, settings, resume=True, progress=False, **kwargs)
