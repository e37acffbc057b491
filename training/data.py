"""Training data (OpenCLIP's data.py): snapshot arrays -> batches, balanced sampling,
modality dropout.

A batch is a dict: "index" (long [B]), "ids" (list), "text" (list of str or None),
"image" (uint8 [B, S, S, 3]), "audio" (float [B, n_mels, frames]), "present"
({modality: bool [B]}) and "labels" ({label: long [B]}, -1 where the label is missing).
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

from dualmedia.contract import CategoricalLabel, DatasetSpec
from dualmedia.snapshot import SnapshotArrays
from training.config import DataConfig
from training.model import Batch


class MultimodalDataset(Dataset):
    def __init__(
        self, arrays: SnapshotArrays, modalities: list[str], augment: bool = False
    ) -> None:
        self.arrays = arrays
        self.modalities = modalities
        self.augment = augment
        self.present = {m: np.asarray(arrays.present[m], dtype=bool) for m in modalities}

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self.arrays
        image = torch.from_numpy(a.image[i])
        audio = torch.from_numpy(a.audio[i])
        if self.augment:
            image = augment_image(image)
            audio = augment_logmel(audio, int(a.audio_valid_frames[i]))
        return {
            "index": i,
            "id": a.ids[i],
            "text": a.text[i],
            "image": image,
            "audio": audio,
            "present": {m: bool(self.present[m][i]) for m in self.modalities},
            "labels": {name: int(values[i]) for name, values in a.labels.items()},
        }


def augment_image(image: torch.Tensor, max_shift: int = 4) -> torch.Tensor:
    """Random horizontal flip and a small translation of an H x W x 3 uint8 photo."""
    if torch.rand(()) < 0.5:
        image = image.flip(1)
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    return torch.roll(image, shifts=(dy, dx), dims=(0, 1))


def augment_logmel(
    logmel: torch.Tensor,
    valid_frames: int,
    max_time_mask: int = 20,
    max_freq_mask: int = 8,
    min_kept_frames: int = 50,
) -> torch.Tensor:
    """Random truncation, then SpecAugment-style masking.

    The clip is cut at a random length (at least `min_kept_frames`, 1 s at the default
    20 ms hop) and the rest set to padding: on small datasets a clip's exact length is a
    fingerprint that contrastive training memorises instead of learning what is said.
    Then one time band (within the kept audio) and one mel band are set to the clip's mean,
    so the encoder cannot rely on any single moment or frequency.
    """
    out = logmel.clone()
    n_mels, frames = out.shape
    valid = max(1, min(valid_frames, frames))
    if valid < frames:  # the padding value is whatever fills the frames after the audio
        kept = int(torch.randint(min(valid, min_kept_frames), valid + 1, ()))
        out[:, kept:valid] = out[0, valid]
        valid = kept
    fill = out[:, :valid].mean()
    width = int(torch.randint(0, max_time_mask + 1, ()))
    if width and valid > width:
        start = int(torch.randint(0, valid - width, ()))
        out[:, start : start + width] = fill
    height = int(torch.randint(0, max_freq_mask + 1, ()))
    if height and n_mels > height:
        start = int(torch.randint(0, n_mels - height, ()))
        out[start : start + height, :valid] = fill
    return out


def collate(items: list[dict[str, Any]]) -> Batch:
    first = items[0]
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
        "text": [it["text"] for it in items],
        "image": torch.stack([it["image"] for it in items]),
        "audio": torch.stack([it["audio"] for it in items]),
        "present": {
            m: torch.tensor([it["present"][m] for it in items], dtype=torch.bool)
            for m in first["present"]
        },
        "labels": {
            name: torch.tensor([it["labels"][name] for it in items], dtype=torch.long)
            for name in first["labels"]
        },
    }


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
    """Weighted sampling with replacement, the same draw on every rank, each rank taking
    its own slice (so it needs no DistributedSampler on top). Lightning calls set_epoch."""

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = math.ceil(num_samples / world_size)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.per_rank * self.world_size
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def audio_statistics(arrays: SnapshotArrays) -> tuple[float, float]:
    """Mean and std of the log-mel values of real audio (padding frames excluded)."""
    present = np.asarray(arrays.present["audio"], dtype=bool)
    values = [
        arrays.audio[i][:, : max(int(arrays.audio_valid_frames[i]), 1)].ravel()
        for i in np.flatnonzero(present)
    ]
    if not values:
        return 0.0, 1.0
    flat = np.concatenate(values)
    return float(flat.mean()), float(flat.std())


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
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_arrays = train
        self.val_arrays = val
        self.modalities = modalities
        self.config = config
        self.seed = seed
        label = primary_label(spec, config.primary_label)
        groups = sampling_groups(train, modalities, label)
        self.weights = sampling_weights(groups, config.balance_power)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer else 0
        world = trainer.world_size if trainer else 1
        sampler = BalancedSampler(self.weights, len(self.weights), self.seed, rank, world)
        dataset = MultimodalDataset(self.train_arrays, self.modalities, self.config.augment)
        per_rank = len(sampler)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            collate_fn=collate,
            # A contrastive batch of one has no negatives; drop a tiny tail, keep a big one.
            drop_last=per_rank > self.config.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_arrays, self.modalities, self.config.eval_batch_size)


def eval_loader(arrays: SnapshotArrays, modalities: list[str], batch_size: int) -> DataLoader:
    """Every item once, in order (each rank evaluates the whole split: metrics need no sync)."""
    return DataLoader(
        MultimodalDataset(arrays, modalities), batch_size=batch_size, collate_fn=collate
    )
