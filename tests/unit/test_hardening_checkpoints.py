"""No code from storage: a tampered checkpoint is refused before any of it runs, on every
path that loads one (the trainer's own reads and Lightning's resume), while real
checkpoints (weights, optimizer, scheduler, callback state) still resume."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from dualmedia.storage import S3Uri
from training.checkpoints import CheckpointRefused, ObjectStoreCheckpointIO, load_checkpoint


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def tampered_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A file that looks like our checkpoint but carries a payload next to the weights."""
    content = {"state_dict": {"w": torch.zeros(2)}, "global_step": 3, "x": Payload(marker)}
    if legacy:  # a bare pickle, not torch's zip format
        path.write_bytes(pickle.dumps(content))
    else:
        torch.save(content, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned.txt"


def test_the_payload_is_real(tmp_path: Path, marker: Path) -> None:
    """What today's `torch.load(weights_only=False)` does with it: runs it."""
    path = tampered_checkpoint(tmp_path / "last.ckpt", marker)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("legacy", [False, True])
def test_a_tampered_checkpoint_is_refused_and_not_run(
    tmp_path: Path, marker: Path, legacy: bool
) -> None:
    path = tampered_checkpoint(tmp_path / "last.ckpt", marker, legacy)
    with pytest.raises(CheckpointRefused, match="refused to load") as info:
        load_checkpoint(path)
    assert "Nothing in it was run" in str(info.value)
    assert not marker.exists()


def test_the_trainer_refuses_it_where_it_reads_checkpoints(tmp_path: Path, marker: Path) -> None:
    from training.train import _checkpoint_step, _load_weights

    path = tampered_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(CheckpointRefused):
        _checkpoint_step(path)
    with pytest.raises(CheckpointRefused):
        _load_weights(pl.LightningModule(), path)
    assert not marker.exists()


def test_something_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    torch.save({"state_dict": {"w": "not a tensor"}, "global_step": 1}, tmp_path / "odd.ckpt")
    torch.save({"state_dict": {}, "global_step": "3"}, tmp_path / "step.ckpt")
    for name in ("junk.ckpt", "odd.ckpt", "step.ckpt"):
        with pytest.raises(CheckpointRefused):
            load_checkpoint(tmp_path / name)


# ---- Lightning's resume path goes through the same safe loader -------------------------
class UploadsNothing:
    """The object store side of ObjectStoreCheckpointIO (not what is tested here)."""

    def upload_file(self, path: Path, uri: S3Uri) -> None:
        pass

    def delete(self, uri: S3Uri) -> None:
        pass


class Tiny(pl.LightningModule):
    """Optimizer, one-cycle schedule and checkpoint callback, like the real stages."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=20)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _trainer(folder: Path, max_steps: int) -> pl.Trainer:
    io = ObjectStoreCheckpointIO(UploadsNothing(), folder, S3Uri("lake", "checkpoints/t"))  # type: ignore[arg-type]
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=0, save_last=True)
        ],
        plugins=[io],
        default_root_dir=folder,
    )


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=4)


def test_lightning_resume_loads_weights_only_and_refuses_a_tampered_file(
    tmp_path: Path, marker: Path
) -> None:
    first = _trainer(tmp_path, max_steps=4)
    first.fit(Tiny(), _data())
    last = tmp_path / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4  # a real checkpoint passes
    resumed = _trainer(tmp_path, max_steps=6)
    resumed.fit(Tiny(), _data(), ckpt_path=last)
    assert resumed.global_step == 6  # continued from step 4, optimizer and schedule too

    tampered = tampered_checkpoint(tmp_path / "tampered.ckpt", marker)
    with pytest.raises(CheckpointRefused):
        _trainer(tmp_path, max_steps=8).fit(Tiny(), _data(), ckpt_path=tampered)
    assert not marker.exists()
