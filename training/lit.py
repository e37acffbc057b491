"""LightningModules of the two stages: contrastive alignment, then fusion.

Both wrap the same FusedModel. Shared here: AdamW with OpenCLIP's parameter groups (no
weight decay on the temperature, biases and norms), warmup + cosine schedule per step,
the temperature clamp after every optimizer step, and checkpoints without the frozen
pretrained weights (re-inserted from the live model when a checkpoint is loaded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from dualmedia.modalities.batch import Batch
from training.config import FusionStageConfig, StageConfig
from training.data import drop_modalities
from training.metrics import classification_scores, retrieval_recall
from training.models.distributed import sum_over_ranks, world_size
from training.models.factory import FusedModel
from training.models.loss import ClipLoss, pair_names, symmetric_clip_loss


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "logit_scale" in name or "bias" in name or "norm" in name


def param_groups(
    named: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: decayed weights, and the rest (temperature, biases, norms) undecayed."""
    trainable = [(n, p) for n, p in named if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in trainable if not no_weight_decay(n, p)],
            "weight_decay": weight_decay,
        },
        {"params": [p for n, p in trainable if no_weight_decay(n, p)], "weight_decay": 0.0},
    ]
    return [dict(g, lr=lr) for g in groups if g["params"]]


def label_loss(
    logits: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    rows: torch.Tensor | None,
    class_weights: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over labels of the cross-entropy on items whose label is known (-1 = missing),
    optionally weighted per class: per label, sum(w * ce) / sum(w) over the global batch.

    Under DDP each rank divides its own sum by the weight summed over all ranks (times the
    world size, which DDP's gradient averaging takes back), so N ranks give the loss and
    gradients of one process with the whole batch, however the known labels and rare
    classes fall across ranks."""
    world = world_size()
    losses = []
    for name, target in labels.items():
        known = target >= 0
        if rows is not None:
            known = known & rows
        safe = target.clamp(min=0)
        weight = class_weights.get(name) if class_weights else None
        w = weight[safe] if weight is not None else torch.ones_like(safe, dtype=torch.float)
        w = w * known
        total = sum_over_ranks(w.sum())
        if float(total) > 0:
            ce = F.cross_entropy(logits[name], safe, reduction="none")
            losses.append((w * ce).sum() / total * world)
    if not losses:
        return sum(x.sum() for x in logits.values()) * 0.0
    return torch.stack(losses).mean()


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """(mean count / class count) ** power, classes never seen get weight 1."""
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    weights = np.ones_like(counts)
    if seen.any():
        weights[seen] = (counts[seen].mean() / counts[seen]) ** power
    return weights


def label_class_counts(labels: dict[str, np.ndarray], classes: dict[str, list[str]]) -> dict:
    """Per label, how many training items have each class (missing labels not counted)."""
    return {
        name: np.bincount(labels[name][labels[name] >= 0], minlength=len(names))
        for name, names in classes.items()
    }


class ClampedOneCycleLR(OneCycleLR):
    """OneCycleLR that stays at its final rate past `total_steps` instead of raising: a run
    resumed mid-epoch replays the rest of that epoch, a few steps more than planned."""

    def get_lr(self) -> list[float]:
        actual = self.last_epoch
        self.last_epoch = min(actual, self.total_steps - 1)
        try:
            return super().get_lr()
        finally:
            self.last_epoch = actual


# What an item keeps of its own target under each `positives` (StageConfig, "dataset"
# resolved); "item" has no groups at all.
ITEM_SHARE = {"item": 1.0, "label": 0.0, "item_and_label": 0.5}


class _StageModule(pl.LightningModule):
    def __init__(
        self, model: FusedModel, stage: StageConfig, primary_label: str | None = None
    ) -> None:
        """`primary_label`: the label whose classes are positives with `positives: label`."""
        super().__init__()
        self.model = model
        self.stage = stage
        unknown = sorted(set(stage.pair_weights) - set(pair_names(model.modalities)))
        if unknown:
            raise ValueError(
                f"pair_weights: no modality pair {unknown} in this model; its pairs: "
                f"{pair_names(model.modalities)}"
            )
        # "dataset": as dataset.yaml pairs the modalities (DatasetSpec.paired_by).
        self.positives = model.spec.paired_by if stage.positives == "dataset" else stage.positives
        if self.positives != "item" and primary_label is None:
            raise ValueError(
                f"positives: {self.positives} needs a label whose classes group the items"
            )
        self.positive_label = primary_label if self.positives != "item" else None
        self.item_share = ITEM_SHARE[self.positives]
        self.clip_loss = ClipLoss(stage.pair_weights, self.item_share)
        self._val_outputs: list[dict[str, Any]] = []

    def _contrastive(
        self,
        embeddings: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        labels: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's contrastive loss of a training batch (and each pair's)."""
        return self.clip_loss(
            embeddings, present, self.model.encoder.logit_scale, self._positive_groups(labels)
        )

    def _positive_groups(self, labels: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The classes whose items are positives of each other (None: each item alone)."""
        return labels[self.positive_label] if self.positive_label else None

    # ---- optimisation -------------------------------------------------------------
    def _groups(self) -> list[dict[str, Any]]:
        return param_groups(
            list(self.model.named_parameters()), self.stage.lr, self.stage.weight_decay
        )

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self._groups()
        optimizer = torch.optim.AdamW(groups)
        total = max(4, int(self.trainer.estimated_stepping_batches))
        warmup = min(max(self.stage.warmup_steps, 2), total // 2)
        # One-cycle: warmup to each group's lr, cosine annealing, Adam's beta1 cycled
        # opposite to the lr. Measured on the demo data it trains the from-scratch ViT
        # clearly faster than linear warmup + cosine with a fixed beta1.
        schedule = ClampedOneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=total,
            pct_start=warmup / total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.model.encoder.clamp_logit_scale()  # OpenCLIP: after every optimizer step

    # ---- checkpoints without frozen pretrained weights ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        skip = {f"model.{k}" for k in self.model.reproducible_state_keys()}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k not in skip
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        live = self.state_dict()
        for key in self.model.reproducible_state_keys():
            checkpoint["state_dict"].setdefault(f"model.{key}", live[f"model.{key}"])

    # ---- shared validation plumbing ---------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def _with_dropout(self, batch: Batch) -> Batch:
        present = drop_modalities(batch["present"], self.stage.modality_dropout)
        return {**batch, "present": present}


class AlignmentModule(_StageModule):
    """Stage 1: contrastive alignment of every modality pair (ClipLoss)."""

    # The validation figure the saved model is selected on (training.callbacks.KeepBest).
    selection = ("val/loss", "min")

    def __init__(
        self, model: FusedModel, stage: StageConfig, primary_label: str | None = None
    ) -> None:
        super().__init__(model, stage, primary_label)
        # The heads play no part in this stage; DDP refuses trainable parameters that
        # receive no gradient.
        model.fusion.requires_grad_(False)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = self._with_dropout(batch)
        embeddings = self.model.encoder(batch)
        loss, pairs = self._contrastive(embeddings, batch["present"], batch["labels"])
        size = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/logit_scale", self.model.encoder.logit_scale.exp(), batch_size=size)
        for name, value in pairs.items():
            self.log(f"train/loss_{name}", value, batch_size=size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        embeddings = self.model.encoder(batch)
        self._val_outputs.append(
            {
                "ids": batch["ids"],
                "emb": embeddings,
                "present": batch["present"],
                "groups": self._positive_groups(batch["labels"]),
            }
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        ids = [i for out in self._val_outputs for i in out["ids"]]
        scale = self.model.encoder.logit_scale.detach()
        # Selected on the loss it trains: with label positives an item-level loss would
        # reward telling apart items that share everything but their id.
        groups = (
            torch.cat([o["groups"] for o in self._val_outputs]) if self.positive_label else None
        )
        recalls, losses = [], []
        for a in self.model.modalities:
            for b in self.model.modalities:
                if a == b:
                    continue
                ea, ma = _cat(self._val_outputs, a)
                eb, mb = _cat(self._val_outputs, b)
                qa = ma.nonzero(as_tuple=True)[0].tolist()
                cb = mb.nonzero(as_tuple=True)[0].tolist()
                r = retrieval_recall(
                    ea[ma], eb[mb], [ids[i] for i in qa], [ids[i] for i in cb], [1]
                )
                recalls.append(r[1])
                both = ma & mb
                if a < b and int(both.sum()) >= 2:
                    same = groups[both] if groups is not None else None
                    loss = symmetric_clip_loss(ea[both], eb[both], scale, same, self.item_share)
                    losses.append(float(loss))
        self.log("val/recall_at_1_mean", float(np.nanmean(recalls)) if recalls else float("nan"))
        if losses:
            self.log("val/loss", float(np.mean(losses)))


def _cat(outputs: list[dict[str, Any]], modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.cat([o["emb"][modality] for o in outputs])
    present = torch.cat([o["present"][modality] for o in outputs])
    return emb, present


class FusionModule(_StageModule):
    """Stage 2: fused label heads (+ unimodal heads, + a little contrastive loss)."""

    selection = ("val/macro_f1_mean", "max")

    stage: FusionStageConfig

    def __init__(
        self,
        model: FusedModel,
        stage: FusionStageConfig,
        class_counts: dict[str, np.ndarray] | None = None,
        primary_label: str | None = None,
    ) -> None:
        super().__init__(model, stage, primary_label)
        model.fusion.requires_grad_(True)
        if not stage.finetune_encoders:
            model.encoder.requires_grad_(False)
        if stage.contrastive_loss_weight == 0:
            model.encoder.logit_scale.requires_grad_(False)  # unused: DDP would refuse it
        # Rare classes (a mismatch, a damaged product) weigh more, as macro-F1 counts them.
        for name, counts in (class_counts or {}).items():
            weight = torch.as_tensor(class_weights(counts, stage.class_balance), dtype=torch.float)
            self.register_buffer(f"class_weight_{name}", weight, persistent=False)

    def _class_weights(self) -> dict[str, torch.Tensor]:
        return {
            name: getattr(self, f"class_weight_{name}")
            for name in self.model.classes
            if hasattr(self, f"class_weight_{name}")
        }

    def _groups(self) -> list[dict[str, Any]]:
        encoder = [(f"encoder.{n}", p) for n, p in self.model.encoder.named_parameters()]
        fusion = [(f"fusion.{n}", p) for n, p in self.model.fusion.named_parameters()]
        lr, wd = self.stage.lr, self.stage.weight_decay
        return param_groups(fusion, lr, wd) + param_groups(
            encoder, lr * self.stage.encoder_lr_scale, wd
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = self._with_dropout(batch)
        out = self.model(batch)
        labels = batch["labels"]
        weights = self._class_weights()
        fused = label_loss(out.logits, labels, None, weights)
        unimodal = torch.stack(
            [
                label_loss(out.unimodal[m], labels, out.present[m], weights)
                for m in self.model.modalities
            ]
        ).sum()
        loss = fused + self.stage.unimodal_loss_weight * unimodal
        if self.stage.contrastive_loss_weight > 0:
            contrastive, _ = self._contrastive(out.embeddings, out.present, labels)
            loss = loss + self.stage.contrastive_loss_weight * contrastive
            self.log("train/contrastive_loss", contrastive, batch_size=len(batch["ids"]))
        size = len(batch["ids"])
        # Each rank holds its share of the global loss (see label_loss): the mean over
        # ranks is the loss of the whole batch.
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/fused_loss", fused, batch_size=size, sync_dist=True)
        self.log("train/unimodal_loss", unimodal, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.model(batch)
        self._val_outputs.append(
            {
                "pred": {n: v.argmax(1).cpu() for n, v in out.logits.items()},
                "labels": {n: v.cpu() for n, v in batch["labels"].items()},
            }
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        f1s = []
        for name, classes in self.model.classes.items():
            pred = torch.cat([o["pred"][name] for o in self._val_outputs]).numpy()
            true = torch.cat([o["labels"][name] for o in self._val_outputs]).numpy()
            scores = classification_scores(true, pred, len(classes))
            self.log(f"val/{name}/macro_f1", scores["macro_f1"])
            self.log(f"val/{name}/accuracy", scores["accuracy"])
            f1s.append(scores["macro_f1"])
        self.log("val/macro_f1_mean", float(np.nanmean(f1s)))
