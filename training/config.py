"""Training configuration: one pydantic model, loadable from YAML (`configs/train/*.yaml`).

`ModelConfig` (training/models/config.py) is the architecture alone; it is stored beside
the weights (model.json) so serving rebuilds the exact model. Everything here (epochs,
learning rates, hardware, checkpointing) only concerns how a model was trained and goes
to MLflow as params.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from dualmedia.contract import parse_yaml_model, read_yaml_model
from training.models.config import ModelConfig

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    # The global batch: N processes take batch_size / N items each, and the contrastive
    # loss compares all batch_size items (features are gathered), so the same config
    # optimises the same way on one CPU or many GPUs.
    batch_size: int = 32
    eval_batch_size: int = 128
    # Sampling weight of an item = frequency(modality combination, primary class) ** -power:
    # 1.0 balances the groups exactly, 0.0 turns balancing off. Exact balance over-samples
    # the few single-modality items of a class many times over, hence the gentler default.
    balance_power: float = 0.5
    primary_label: str | None = Field(
        default=None, description="label balanced by the sampler; None = first categorical"
    )
    augment: bool = True  # photos: flips and shifts; spectrograms: truncation, time and mel masks


class StageConfig(_Strict):
    # 40: on real scans + speech (benchmarks/real_data.py --speech) 20 epochs left the
    # alignment short (the best validation epoch 15 of 20; zero-shot from the scans 0.915
    # vs 0.967 at 40, best epoch 27). The saved epoch is the best on validation either way.
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    # Probability of hiding each present modality of a training item (never the last one).
    modality_dropout: float = 0.0
    # Positives of the contrastive loss: "dataset" (what dataset.yaml's `paired_by` says:
    # item or label), "item" (an item's own other modalities: CLIP), "label" (every item of
    # the same class of data.primary_label too, evenly: supervised contrastive, for data
    # whose modalities share only the label) or "item_and_label" (half the target on the
    # item itself, half over its class). Validation, which selects the saved epoch, scores
    # the same loss.
    positives: Literal["dataset", "item", "label", "item_and_label"] = "dataset"
    # Weight of each modality pair in the contrastive loss, by <a>_<b> in canonical order
    # (text, image, audio, video), e.g. {image_audio: 0.3}; unnamed pairs weigh 1.
    pair_weights: dict[str, float] = Field(default_factory=dict)


class FusionStageConfig(StageConfig):
    epochs: int = 30
    # High on purpose: with ~400 training items the fusion otherwise leans on whichever
    # encoder memorised the training set best.
    modality_dropout: float = 0.5
    # Weight of each modality's own head loss (summed over modalities): these heads serve
    # late fusion and disagreement flags, and give every encoder its own training signal.
    unimodal_loss_weight: float = 0.5
    contrastive_loss_weight: float = 0.1  # keeps the embedding space aligned while fine-tuning
    # Class weights (mean class count / class count) ** class_balance in the label losses:
    # 1.0 balances rare classes fully (what macro-F1 rewards), 0.0 turns it off.
    class_balance: float = 1.0
    encoder_lr_scale: float = 0.5  # encoders move slower than the freshly initialised heads
    finetune_encoders: bool = True


class HardwareConfig(_Strict):
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several devices or nodes
    precision: str | None = Field(
        default=None, description="None = bf16-mixed on GPU, 32-true on CPU"
    )
    threads: int | None = Field(default=None, description="torch CPU threads; None = leave")


class CheckpointConfig(_Strict):
    every_n_steps: int = 50


class TrackingConfig(_Strict):
    log_every_n_steps: int = 5
    system_metrics_interval_s: float = 5.0


class EvalConfig(_Strict):
    recall_ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    retrieval_examples: int = 4


class TrainConfig(_Strict):
    run_name: str | None = Field(
        default=None, description="names the checkpoint folder; None = dataset-snapshot-config"
    )
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    alignment: StageConfig = Field(default_factory=StageConfig)
    fusion: FusionStageConfig = Field(default_factory=FusionStageConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def digest(self) -> str:
        """Content hash of the configuration (names runs and their checkpoint folders)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def with_epochs(self, epochs: int) -> TrainConfig:
        """The same configuration with both stages trained for `epochs` epochs."""
        data = self.model_dump()
        data["alignment"]["epochs"] = epochs
        data["fusion"]["epochs"] = epochs
        return TrainConfig.model_validate(data)


def named_config(
    name: str,
    epochs: int | None = None,
    batch_size: int | None = None,
    fusion_type: str | None = None,
) -> TrainConfig:
    """`configs/train/<name>.yaml` with the overrides a pipeline run may set (None: keep)."""
    config = load_train_config(REPO_CONFIGS / f"{name}.yaml")
    data = config.model_dump()
    if epochs:
        data["alignment"]["epochs"] = data["fusion"]["epochs"] = epochs
    if batch_size:
        data["data"]["batch_size"] = batch_size
    if fusion_type:
        data["model"]["fusion"]["mode"] = fusion_type
    return TrainConfig.model_validate(data)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML training configuration; ValueError naming the file and field if invalid.

    A configuration may start from another one of configs/train/ (`base: tiny`) and set
    only what differs; mappings merge key by key, anything else replaces."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None
    raw = yaml.safe_load(text) if text else None
    if not isinstance(raw, dict) or "base" not in raw:
        return read_yaml_model(TrainConfig, path, "training config")
    base = load_train_config(REPO_CONFIGS / f"{raw.pop('base')}.yaml").model_dump(mode="json")
    merged = yaml.safe_dump(_merge(base, raw))
    return parse_yaml_model(TrainConfig, merged, str(path), "training config")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their JSON text (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat
