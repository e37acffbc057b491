"""Lightning callbacks of the trainer: progress on the console (rich, stderr)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytorch_lightning as pl

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
