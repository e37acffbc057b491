"""Training data (OpenCLIP's data.py): snapshot arrays -> batches, balanced sampling,
modality dropout.

A batch is the registry's (dualmedia/modalities/batch.py: "inputs" and "present" keyed
by modality) plus "index" (long [B]), "ids" (list) and "labels" ({label: long [B]}, -1
where the label is missing). Augmentation is each modality's own (`ModalitySpec.augment`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dualmedia import modalities as registry
from dualmedia.contract import CategoricalLabel, DatasetSpec
from dualmedia.modalities import MediaConfig
from dualmedia.modalities.batch import Batch, assemble_batch
from dualmedia.snapshot import SnapshotArrays
from training.config import DataConfig


class MultimodalDataset(Dataset):
    def __init__(
        self,
        arrays: SnapshotArrays,
        modalities: list[str],
        augment: bool = False,
        media: MediaConfig | None = None,
    ) -> None:
        """`media`: the snapshot's media config, whose sections say which augmentations
        the data allows (default: the defaults, which allow none that changes meaning)."""
        self.arrays = arrays
        self.modalities = modalities
        self.augment = augment
        self.media = media or MediaConfig()

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self.arrays
        inputs = {m: a.inputs[m][i] for m in self.modalities}
        if self.augment:
            # Drawn from torch's generator, so Lightning's seed makes a run reproducible.
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
            inputs = {
                m: None if x is None else registry.get(m).augment(x, rng, self.media.section(m))
                for m, x in inputs.items()
            }
        return {
            "index": i,
            "id": a.ids[i],
            "inputs": inputs,
            "labels": {name: int(values[i]) for name, values in a.labels.items()},
        }


def collate_with(media: Any, modalities: list[str]) -> Any:
    """The DataLoader's collate: the one batch builder, plus ids, indices and labels."""

    def collate(items: list[dict[str, Any]]) -> Batch:
        batch = assemble_batch([it["inputs"] for it in items], modalities, media)
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        batch["ids"] = [it["id"] for it in items]
        batch["labels"] = {
            name: torch.tensor([it["labels"][name] for it in items], dtype=torch.long)
            for name in items[0]["labels"]
        }
        return batch

    return collate


def drop_modalities(
    present: dict[str, torch.Tensor], p: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Hide each present modality with probability p, never the last present one of an item
    (a random one of its present modalities survives)."""
    if p <= 0:
        return present
    names = list(present)
    mask = torch.stack([present[m] for m in names], dim=1)
    device = mask.device
    drop = torch.rand(mask.shape, generator=generator).to(device) < p
    kept = mask & ~drop
    lost_all = mask.any(1) & ~kept.any(1)
    if lost_all.any():
        scores = torch.rand(mask.shape, generator=generator).to(device).masked_fill(~mask, -1.0)
        survivor = scores.argmax(dim=1)
        rows = lost_all.nonzero(as_tuple=True)[0]
        kept[rows, survivor[rows]] = True
    return {m: kept[:, i] for i, m in enumerate(names)}


def primary_label(spec: DatasetSpec, configured: str | None) -> str | None:
    """The label the sampler balances: the configured one, else the first categorical one."""
    if configured is not None:
        if configured not in spec.labels:
            raise ValueError(f"data.primary_label {configured!r} is not a label of {spec.name}")
        return configured
    for name, label in spec.labels.items():
        if isinstance(label, CategoricalLabel):
            return name
    return next(iter(spec.labels), None)


def sampling_groups(
    arrays: SnapshotArrays, modalities: list[str], label: str | None
) -> list[tuple[Any, ...]]:
    """Each item's group: (which modalities it has, its class of the primary label)."""
    combos = np.stack([arrays.present[m] for m in modalities], axis=1)
    classes = arrays.labels[label] if label is not None else np.full(len(arrays), -1)
    return [(*map(bool, row), int(c)) for row, c in zip(combos, classes, strict=True)]


def sampling_weights(groups: list[tuple[Any, ...]], power: float) -> np.ndarray:
    """Weight of an item = frequency of its group ** -power (1.0: every group equally likely)."""
    counts = Counter(groups)
    return np.array([counts[g] ** -power for g in groups], dtype=np.float64)


class BalancedSampler(Sampler[int]):
    """Weighted sampling, the same draw on every rank, each rank taking its own slice (so
    it needs no DistributedSampler on top). Lightning calls set_epoch.

    Items are drawn with replacement across batches (that is what balances rare groups)
    but never twice within one global batch of `batch_size`: a contrastive batch holding
    an item twice makes it its own negative. Rank r takes draws r, r + world, ..., so each
    rank's batch is a slice of one global batch."""

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = math.ceil(num_samples / world_size)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # A batch cannot be larger than the items that can fill it.
        self.batch_size = max(1, min(batch_size, int((self.weights > 0).sum())))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.per_rank * self.world_size
        batches = [
            torch.multinomial(self.weights, self.batch_size, replacement=False, generator=generator)
            for _ in range(math.ceil(total / self.batch_size))
        ]
        drawn = torch.cat(batches)[:total]
        return iter(drawn[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def rank_batch_size(global_batch: int, world_size: int) -> int:
    """Each process's share of the global batch (`data.batch_size`)."""
    if global_batch % world_size:
        raise ValueError(
            f"data.batch_size {global_batch} does not split over {world_size} processes: "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


class SnapshotDataModule(pl.LightningDataModule):
    """Train/val loaders over snapshot arrays; the sampler reads rank and world size from
    the trainer, so the same module works on one CPU or many GPUs."""

    def __init__(
        self,
        train: SnapshotArrays,
        val: SnapshotArrays,
        spec: DatasetSpec,
        modalities: list[str],
        config: DataConfig,
        media: Any,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.media = media
        self.train_arrays = train
        self.val_arrays = val
        self.modalities = modalities
        self.config = config
        self.seed = seed
        # The label the sampler balances (and whose classes are positives with
        # `positives: label`).
        self.primary_label = primary_label(spec, config.primary_label)
        groups = sampling_groups(train, modalities, self.primary_label)
        self.weights = sampling_weights(groups, config.balance_power)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer else 0
        world = trainer.world_size if trainer else 1
        sampler = BalancedSampler(
            self.weights, len(self.weights), self.seed, rank, world, self.config.batch_size
        )
        dataset = MultimodalDataset(
            self.train_arrays, self.modalities, self.config.augment, self.media
        )
        per_rank = len(sampler)
        batch_size = rank_batch_size(self.config.batch_size, world)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_with(self.media, self.modalities),
            # A contrastive batch of one has no negatives; drop a tiny tail, keep a big one.
            drop_last=per_rank > batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(
            self.val_arrays, self.modalities, self.config.eval_batch_size, self.media
        )


def eval_loader(
    arrays: SnapshotArrays, modalities: list[str], batch_size: int, media: Any
) -> DataLoader:
    """Every item once, in order (each rank evaluates the whole split: metrics need no sync)."""
    return DataLoader(
        MultimodalDataset(arrays, modalities),
        batch_size=batch_size,
        collate_fn=collate_with(media, modalities),
    )
