"""Training a cell-type classifier on the CLS state: the Lightning module, its data and its run.

:func:`bioformers.tl.annotate` prepares the inputs (CLS embeddings of the reference, or its binned
cells and a copy of the network) and calls :func:`fit_classifier`.
"""

from __future__ import annotations

import copy
import signal
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from scipy import sparse
from torch import nn
from torch.utils.data import DataLoader

from .._logging import lightning_console
from ._guard import FiniteLossCheck, _Watch
from ._progress import progress_callbacks

if TYPE_CHECKING:
    from collections.abc import Iterator


def classification_head(n_hidden: int, n_classes: int) -> nn.Module:
    """LayerNorm then a linear layer: multinomial logistic regression on the standardised CLS state.

    The norm puts CLS states of any scale on one footing, so one learning rate suits every model.
    """
    return nn.Sequential(nn.LayerNorm(n_hidden), nn.Linear(n_hidden, n_classes))


def balanced_weights(codes: np.ndarray, n_classes: int) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"``: ``n / (n_classes * count)``, so every class weighs the same."""
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    return torch.as_tensor(codes.size / (n_classes * counts), dtype=torch.float32)


class AnnotationPlan(LightningModule):
    """Weighted cross-entropy of a classification head on CLS.

    Parameters
    ----------
    head
        Maps CLS states ``(cells, n_hidden)`` to class logits.
    encoder
        A :class:`~bioformers.module.BioFormerModule` trained along with the head: batches then hold
        binned cells and CLS comes from ``encoder.embed``. ``None``: batches hold CLS states.
    class_weights
        Weight of each class in the loss.
    lr
        Learning rate of the head.
    encoder_lr
        Learning rate of the encoder.
    weight_decay
        AdamW weight decay of the head's and encoder's matrices.
    """

    def __init__(
        self,
        head: nn.Module,
        *,
        encoder: nn.Module | None = None,
        class_weights: torch.Tensor,
        lr: float,
        encoder_lr: float,
        weight_decay: float,
    ):
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.register_buffer("class_weights", class_weights)
        self.lr, self.encoder_lr, self.weight_decay = lr, encoder_lr, weight_decay
        self.history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch (CLS states, or binned cells when training the encoder)."""
        return self.head(self.encoder.embed(x) if self.encoder is not None else x)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x).float(), y, weight=self.class_weights)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Weighted cross-entropy of one minibatch."""
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        """The same loss on validation cells (the encoder is in eval mode: no dropout, fixed genes)."""
        self.log("validation_loss", self._loss(batch), on_step=False, on_epoch=True, batch_size=len(batch[1]))

    def on_train_epoch_end(self) -> None:
        """Keep the epoch's mean training loss."""
        self.history["train_loss"].append(float(self.trainer.callback_metrics["train_loss"]))

    def on_validation_epoch_end(self) -> None:
        """Keep the epoch's validation loss."""
        self.history["validation_loss"].append(float(self.trainer.callback_metrics["validation_loss"]))

    def configure_optimizers(self):
        """AdamW (decay on matrices only) with a cosine decay over all steps."""
        groups = []
        for params, lr in ((self.head.named_parameters(), self.lr), (self._encoder_parameters(), self.encoder_lr)):
            decay, no_decay = [], []
            for name, param in params:
                (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
            groups += [
                {"params": decay, "lr": lr, "weight_decay": self.weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _encoder_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return (item for item in self.encoder.named_parameters() if item[1].requires_grad) if self.encoder else iter(())


def _loader(x, y: np.ndarray, *, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Minibatches ``(x rows, labels)``; sparse rows (binned cells) are made dense one batch at a time."""
    labels = torch.as_tensor(y, dtype=torch.long)

    def collate(rows: list[int]):
        rows = np.asarray(rows)
        block = x[rows]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        return torch.from_numpy(block.astype(np.float32, copy=False)), labels[rows]

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(range(len(y)), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


@contextmanager
def _interruptible(watch: _Watch) -> Iterator[None]:
    """Let Ctrl-C stop training as a ``KeyboardInterrupt`` and restore the ``SIGINT`` handler.

    Lightning answers Ctrl-C with ``sys.exit(1)`` and leaves ``SIGINT`` ignored; nothing has been
    written by then, so the caller's interrupt simply propagates.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if on_main_thread else None
    try:
        yield
    except SystemExit:
        if isinstance(watch.exception, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)


def fit_classifier(
    x,
    codes: np.ndarray,
    *,
    n_classes: int,
    encoder: nn.Module | None,
    head: nn.Module | None = None,
    n_hidden: int,
    validation: np.ndarray | None,
    max_epochs: int,
    batch_size: int,
    lr: float,
    encoder_lr: float,
    weight_decay: float,
    class_weight: bool,
    seed: int,
    accelerator: str,
    precision: str,
    **trainer_kwargs,
) -> AnnotationPlan:
    """Train a classification head (and ``encoder``, when given) on ``x`` with labels ``codes``.

    Parameters
    ----------
    x
        CLS states ``(cells, n_hidden)`` (``encoder=None``), or binned cells ``(cells, n_genes)``
        (sparse) read by ``encoder``.
    codes
        Class of each cell, ``0 .. n_classes - 1``.
    encoder
        The network to train with the head (trained in place: pass a copy), or ``None``.
    head
        The head to start from (trained in place); ``None``: a new :func:`classification_head`.
    n_hidden
        Width of the CLS state, for a new head.
    validation
        Boolean mask of cells held out of training; the weights of the epoch with the lowest
        validation loss are kept. ``None``: train on all cells and keep the last epoch.
    max_epochs, batch_size, lr, encoder_lr, weight_decay
        The run.
    class_weight
        Weigh classes inversely to their frequency (among the training cells).
    seed
        Seeds the head's initialisation, the order of cells, dropout and gene sampling.
    accelerator, precision, **trainer_kwargs
        Passed to Lightning's ``Trainer``.

    Returns
    -------
    The trained plan (``plan.head``, ``plan.encoder``, ``plan.history``), in eval mode.
    """
    train = np.ones(codes.size, dtype=bool) if validation is None else ~validation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plan = AnnotationPlan(
            classification_head(n_hidden, n_classes) if head is None else head,
            encoder=encoder,
            class_weights=balanced_weights(codes[train], n_classes) if class_weight else torch.ones(n_classes),
            lr=lr,
            encoder_lr=encoder_lr,
            weight_decay=weight_decay,
        )
        train_rows = np.flatnonzero(train)
        train_loader = _loader(x[train_rows], codes[train_rows], batch_size=batch_size, shuffle=True, seed=seed)
        val_loader = None
        best = _KeepBest()
        callbacks = [FiniteLossCheck()]
        if validation is not None:
            val_rows = np.flatnonzero(validation)
            val_loader = _loader(x[val_rows], codes[val_rows], batch_size=batch_size, shuffle=False, seed=seed)
            callbacks.append(best)
        watch = _Watch()
        n_validation = 0 if validation is None else int(validation.sum())
        what = "cell-type classifier" if encoder is None else "cell-type classifier and encoder"
        trainer_kwargs = progress_callbacks(
            {"devices": 1, "log_every_n_steps": 1} | trainer_kwargs,
            subject=f"{what} ({n_classes} classes) on {train_rows.size:,} cells",
            batch_size=batch_size,
            n_validation=n_validation,
            scvi_trainer=False,
        )
        # Lightning 2.6 keeps the modules' mode; the encoder copy may come in eval mode
        plan.train()
        with warnings.catch_warnings(), _interruptible(watch), lightning_console():
            # without validation cells the plan's validation step is simply not run
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            trainer = Trainer(
                accelerator=accelerator,
                max_epochs=max_epochs,
                precision=precision,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                callbacks=[*callbacks, watch, *trainer_kwargs.pop("callbacks")],
                **trainer_kwargs,
            )
            trainer.fit(plan, train_loader, val_loader)
    if best.state is not None:
        plan.load_state_dict(best.state)
    plan.best_epoch = best.epoch if best.state is not None else len(plan.history["train_loss"]) - 1
    return plan.eval()


class _KeepBest(Callback):
    """Keeps a copy of the weights of the epoch with the lowest validation loss (in memory: no files)."""

    def __init__(self):
        self.state: dict | None = None
        self.epoch = -1
        self._best = float("inf")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Copy the weights when the validation loss improved."""
        loss = float(trainer.callback_metrics["validation_loss"])
        if loss < self._best:
            self._best, self.epoch = loss, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.state_dict())
