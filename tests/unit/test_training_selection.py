"""The saved model is the epoch that did best on the validation split."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.callbacks import KeepBest

# The validation figure each epoch reports: epoch 1 is the best (lowest).
VAL_LOSSES = [3.0, 1.0, 2.0, 4.0]


class Counting(pl.LightningModule):
    """One weight that training moves every epoch; validation reports a scripted figure."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.weight - 100.0).pow(2).sum()

    def on_train_batch_end(self, *args: object) -> None:
        with torch.no_grad():  # epoch e trains the weight to e + 1
            self.weight.fill_(self.current_epoch + 1)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", VAL_LOSSES[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(callback: KeepBest, validate: bool) -> Counting:
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    module = Counting()
    trainer = pl.Trainer(
        max_epochs=len(VAL_LOSSES),
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
    )
    trainer.fit(module, data, data if validate else None)
    return module


def test_the_stage_ends_with_the_weights_of_its_best_validation_epoch() -> None:
    keep = KeepBest("val/loss", "min")
    module = _fit(keep, validate=True)
    assert float(module.weight) == 2.0  # the weights at the end of epoch 1, not the last (4)
    assert keep.summary() == {"selected_on": "val/loss", "selected_value": 1.0, "selected_epoch": 1}


def test_max_mode_and_no_validation_split() -> None:
    keep = KeepBest("val/loss", "max")
    assert float(_fit(keep, validate=True).weight) == 4.0  # epoch 3 reported the highest
    none = KeepBest("val/loss", "min")
    assert float(_fit(none, validate=False).weight) == 4.0  # nothing to select on: the last
    assert none.summary()["selected_epoch"] is None
