"""Lightning callbacks of the trainer: progress on the console (rich, stderr), and keeping
the epoch that did best on the validation split."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytorch_lightning as pl
import torch

from dualmedia.console import progress_bar


class ConsoleProgress(pl.Callback):
    """One rich progress bar per stage, in optimizer steps (resumed steps count as done)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._stack: ExitStack | None = None
        self._advance: Callable[..., None] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._stack = ExitStack()
        total = int(trainer.estimated_stepping_batches)
        self._advance = self._stack.enter_context(progress_bar(self.description, total))
        if trainer.global_step:
            self._advance(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._advance is not None:
            self._advance(1)

    def _close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._advance = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException
    ) -> None:
        self._close()


class KeepBest(pl.Callback):
    """At the end of a stage, restore the weights of the epoch with the best validation
    figure (`monitor`, `mode` "min" or "max"), so the saved model is selected on the
    validation split; the test split is never looked at. Without a validation figure (an
    empty split) the last epoch stays. The best weights are kept in memory: a stage resumed
    after a crash selects among the epochs it ran itself."""

    def __init__(self, monitor: str, mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if math.isfinite(value) and self._better(value):
            self.best_value, self.best_epoch = value, int(trainer.current_epoch)
            self._best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
            self._best_state = None

    def summary(self) -> dict[str, Any]:
        """What the stage result records: the figure, its value and the epoch kept."""
        return {
            "selected_on": self.monitor,
            "selected_value": None if self.best_value is None else round(self.best_value, 4),
            "selected_epoch": self.best_epoch,
        }
