"""What every bioformers training run shows: a start line, then one progress bar over all its steps.

The start line says what is trained on how much data, for how many epochs of how many steps. The
bar counts optimiser steps over the whole run (so tqdm's estimate of the time left is for the
run, not the epoch) and shows the epoch, the training and validation losses and the cells per
second. Lightning's own bar would also show ``v_num``, the version of a log directory nobody reads.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from scanpy import logging as logg
from scvi.train._progress import ProgressBar as ScviProgressBar
from scvi.utils import track

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: Least seconds between two readings of the running training loss (each waits for the device).
LOSS_REFRESH_S = 0.5


def start_line(
    trainer: pl.Trainer, subject: str | None, batch_size: int | None, n_validation: int | None = None
) -> str:
    """The line said at the start of a run: what, on how many cells, how many epochs of how many steps.

    Parameters
    ----------
    trainer
        The trainer of the run, after its data are set up (``on_train_start``).
    subject
        What is trained on what, e.g. ``"BioFormer on 2,638 cells x 2,000 genes"``.
    batch_size
        Cells per step (of each process).
    n_validation
        Cells held out for the validation loss; ``None`` reads the data splitter's.

    Returns
    -------
    str
        E.g. ``"training BioFormer on 2,638 cells x 2,000 genes (264 held out for validation): 11
        epochs of 38 steps of 64 cells"``.
    """
    if n_validation is None:
        n_validation = getattr(trainer.datamodule, "n_val", None)
    line = f"training {subject or type(trainer.lightning_module).__name__}"
    if n_validation:
        line += f" ({n_validation:,} held out for validation)"
    steps = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        line += f": {trainer.max_epochs} epoch{'s' if trainer.max_epochs != 1 else ''}"
        if math.isfinite(steps):
            line += f" of {steps:,} step{'s' if steps != 1 else ''}"
    elif trainer.max_steps and trainer.max_steps > 0:
        line += f": {trainer.max_steps:,} steps"
    if batch_size:
        line += f" of {batch_size:,} cells"
    if trainer.world_size > 1:
        line += f" on each of {trainer.world_size} processes"
    if trainer.current_epoch > 0:
        line += f", resumed after epoch {trainer.current_epoch}"
    return line


def _batch_cells(batch: Any) -> int:
    """Cells in a minibatch: the length of its first tensor (dict, tuple or tensor batches)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 0
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    for value in values:
        n = _batch_cells(value)
        if n:
            return n
    return 0


class StartLine(Callback):
    """Logs :func:`start_line` with Scanpy's ``logg.info`` (for runs without :class:`TrainingProgressBar`).

    Parameters
    ----------
    subject, batch_size, n_validation
        As in :func:`start_line`.
    """

    def __init__(self, subject: str | None = None, batch_size: int | None = None, n_validation: int | None = None):
        self.subject, self.batch_size, self.n_validation = subject, batch_size, n_validation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the start line (global rank 0 only)."""
        if trainer.is_global_zero:
            logg.info(start_line(trainer, self.subject, self.batch_size, self.n_validation))


class TrainingProgressBar(ScviProgressBar):
    """Progress of a bioformers training run: one bar over all its optimiser steps.

    Before the bar it prints :func:`start_line`. The bar's description is the epoch
    (``Epoch 3/11``); tqdm shows the steps done, the time spent and an estimate of the time left;
    the postfix (:meth:`get_metrics`) the training loss (the running mean of the epoch, then its
    logged mean), the last validation loss and the cells per second. It is scvi-tools' progress bar
    (printed to stdout, switched off by ``enable_progress_bar=False``), counting steps instead of
    epochs. A disabled bar (e.g. on ranks other than 0) logs the start line with ``logg.info``.

    Parameters
    ----------
    subject, batch_size, n_validation
        As in :func:`start_line`.
    """

    def __init__(self, subject: str | None = None, batch_size: int | None = None, n_validation: int | None = None):
        super().__init__(refresh_rate=1)
        self.subject, self.batch_size, self.n_validation = subject, batch_size, n_validation
        self.main_progress_bar = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._cells = 0
        self._started = time.perf_counter()
        self._loss_sum: torch.Tensor | None = None
        self._loss_steps = 0
        self._running_loss: float | None = None
        self._last_refresh = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the start line and open the bar over every step of the run."""
        line = start_line(trainer, self.subject, self.batch_size, self.n_validation)
        if not self.is_enabled:
            if trainer.is_global_zero:
                logg.info(line)
            return
        print(line, file=sys.stdout, flush=True)
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            total = trainer.max_epochs * per_epoch
        else:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else math.inf
        done = trainer.current_epoch * per_epoch
        finite = math.isfinite(total) and math.isfinite(done)
        self.main_progress_bar = track(
            None,
            total=int(total) if finite else None,
            initial=int(done) if finite else 0,
            description=self._epoch(trainer),
            style="tqdm",
            unit="step",
            dynamic_ncols=True,
        )
        self._reset_counters()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the epoch and start its running loss."""
        self._loss_sum, self._loss_steps, self._running_loss = None, 0, None
        if self.main_progress_bar is not None:
            self.main_progress_bar.set_description(self._epoch(trainer), refresh=False)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the step and its cells; refresh the postfix at most every :data:`LOSS_REFRESH_S` seconds."""
        if self.main_progress_bar is None:
            return
        self._cells += _batch_cells(batch) * trainer.world_size
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_steps += 1
        self.main_progress_bar.update(1)
        now = time.perf_counter()
        if now - self._last_refresh >= LOSS_REFRESH_S:
            self._last_refresh = now
            if self._loss_sum is not None:
                self._running_loss = float(self._loss_sum) / self._loss_steps
            self.main_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the epoch's logged training loss and the validation loss."""
        self._running_loss = None
        if self.main_progress_bar is not None:
            self.main_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the bar."""
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Close the bar where training stopped (Ctrl-C, a diverged loss)."""
        self._close()

    def _close(self) -> None:
        if self.main_progress_bar is not None:
            self.main_progress_bar.close()
            self.main_progress_bar = None

    @staticmethod
    def _epoch(trainer: pl.Trainer) -> str:
        epochs = trainer.max_epochs
        if epochs is None or epochs < 0:
            return f"Epoch {trainer.current_epoch + 1}"
        return f"Epoch {min(trainer.current_epoch + 1, epochs)}/{epochs}"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str | int]:
        """The postfix: ``train_loss``, ``validation_loss`` (once there is one), other bar metrics, ``cells/s``.

        ``train_loss`` is the running mean of the current epoch while it trains, then the epoch's
        logged mean. Lightning's ``v_num`` is left out.
        """
        logged = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        metrics: dict[str, str | int] = {}
        epoch_means = trainer.callback_metrics
        train = self._running_loss
        if train is None:
            train = epoch_means.get("train_loss_epoch", epoch_means.get("train_loss", logged.get("train_loss")))
        validation = epoch_means.get("validation_loss", logged.get("validation_loss"))
        for name, value in (("train_loss", train), ("validation_loss", validation)):
            if value is not None:
                metrics[name] = _rounded(value)
        for name, value in logged.items():
            if name not in metrics and not name.startswith(("train_loss", "validation_loss")):
                metrics[name] = _rounded(value)
        elapsed = time.perf_counter() - self._started
        if self._cells and elapsed > 0:
            metrics["cells/s"] = round(self._cells / elapsed)
        return metrics


def _rounded(value: Any) -> str | Any:
    """A number with 4 significant digits, as text (tqdm would round numbers to 3)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float | int) else value


def progress_callbacks(
    trainer_kwargs: dict[str, Any],
    *,
    subject: str | None,
    batch_size: int | None,
    n_validation: int | None = None,
    scvi_trainer: bool = True,
) -> dict[str, Any]:
    """``trainer_kwargs`` with bioformers' progress display: :class:`TrainingProgressBar`, or :class:`StartLine`.

    The bar is added unless ``enable_progress_bar=False``, the callbacks hold a progress bar already,
    or (``scvi_trainer``) ``simple_progress_bar`` is given: then only the start line, with
    ``logg.info``. For scvi-tools' trainer its own bar is switched off (``simple_progress_bar=False``).
    """
    kwargs = dict(trainer_kwargs)
    callbacks = kwargs.pop("callbacks", None) or []
    callbacks = [*(callbacks if isinstance(callbacks, list | tuple) else [callbacks])]
    own_bar = any(isinstance(c, LightningProgressBar) for c in callbacks) or (
        scvi_trainer and "simple_progress_bar" in kwargs
    )
    if kwargs.get("enable_progress_bar", True) and not own_bar:
        callbacks.append(TrainingProgressBar(subject, batch_size, n_validation))
        if scvi_trainer:
            kwargs["simple_progress_bar"] = False
    else:
        callbacks.append(StartLine(subject, batch_size, n_validation))
    kwargs["callbacks"] = callbacks
    return kwargs
