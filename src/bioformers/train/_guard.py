"""What training adds around Lightning: checkpoints, exact resume, a stop on divergence, and Ctrl-C.

Lightning 2.6 answers a ``KeyboardInterrupt`` inside ``fit`` with a "graceful shutdown": it runs
the ``on_exception`` hooks, tears the trainer down, sets ``SIGINT`` to be ignored from then on and
calls ``sys.exit(1)``. scvi-tools' ``TrainRunner`` then re-raises without marking the model
trained. In a notebook that loses the run, and later Ctrl-C presses are ignored. A
:class:`TrainingSession` instead stops training, keeps the model usable and restores the
``SIGINT`` handler (see :meth:`TrainingSession.guard`).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback

from .._docs import DOC_CHECKPOINT_EVERY, doc_params
from .._logging import lightning_console
from ._checkpoint import EpochCheckpoint, ResumeState, SafeCheckpointIO, check_checkpoint_fits, find_checkpoint
from ._progress import progress_callbacks

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lightning.pytorch as pl


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss or the gradients became NaN or infinite.

    Raised by :meth:`bioformers.BioFormer.train` (and :func:`bioformers.tl.pretrain`),
    :meth:`bioformers.BioFormer.train_perturbation` and :meth:`bioformers.CellDiffusion.train` before
    the bad step changes the weights; its message names likely causes. The model stays usable.

    Examples
    --------
    It is a :class:`FloatingPointError`, so code that catches those catches it too:

    >>> import bioformers as bf
    >>> issubclass(bf.train.NonFiniteLossError, FloatingPointError)
    True
    """


class FiniteLossCheck(Callback):
    """Stop training with :class:`NonFiniteLossError` before a non-finite loss or gradient changes the weights.

    The check runs after the backward pass and before the optimiser step (and before gradient
    clipping, which would spread a NaN over every gradient), so the weights stay those of the last
    good step. It costs one gradient norm and one device-to-host read of a flag per step. Under
    fp16 mixed precision (``precision="16-mixed"``) infinite gradients are the loss scaler's
    business (it skips such steps), so only the loss is checked there. Under DDP the flag is
    combined across processes so that all stop together.

    Parameters
    ----------
    checkpoint_dir
        Where checkpoints are written, named in the error; ``None`` when there are none.
    """

    def __init__(self, checkpoint_dir: str | None = None):
        self.checkpoint_dir = checkpoint_dir
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Keep the loss of this step (no device synchronisation here)."""
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Raise before the step when the loss or the gradient norm is not finite."""
        if self._loss is None:
            return
        loss, self._loss = self._loss.float(), None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # a loss scaler (fp16 mixed precision) skips steps with infinite gradients by design
        check_grads = bool(grads) and getattr(trainer.precision_plugin, "scaler", None) is None
        norm = torch.nn.utils.get_total_norm(grads) if check_grads else torch.zeros((), device=loss.device)
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce((~finite).float(), reduce_op="sum") == 0
        if bool(finite):
            return
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(self._message(trainer, optimizer, float(loss), float(norm)))

    def _message(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer, loss: float, norm: float) -> str:
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm} (loss {loss:.4g})"
        lr = optimizer.param_groups[0]["lr"]
        where = f"epoch {trainer.current_epoch + 1}, optimiser step {trainer.global_step + 1}"
        resume = (
            f" Checkpoints of finished epochs are in {self.checkpoint_dir!r}; `resume_from=` continues from one."
            if self.checkpoint_dir
            else ""
        )
        return (
            f"Training diverged at {where}: {what}. Likely causes: a learning rate too high for this model and "
            f"data (the step's learning rate was {lr:.3g}; try `lr` ten times smaller or a longer warm-up with "
            f"`warmup_fraction`); overflow under reduced precision (precision={trainer.precision!r}; try "
            "`precision='32-true'`); or non-finite or extreme input values (bin raw counts with `bf.pp.bin` and "
            "check them for NaN, inf and outliers). The model keeps the weights from before this step (they were "
            f"not updated with it) and the loss history of its finished epochs, and it is usable.{resume}"
        )


class _Watch(Callback):
    """Remembers the trainer and the exception Lightning handled, which scvi-tools does not hand back."""

    def __init__(self):
        self.trainer: pl.Trainer | None = None
        self.exception: BaseException | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the trainer."""
        self.trainer = trainer

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Keep the exception that ended ``fit``."""
        self.exception = exception


@doc_params(checkpoint_every=DOC_CHECKPOINT_EVERY)
class TrainingSession:
    """Checkpoints, resume, the divergence check, Ctrl-C handling and console output of one training call.

    Parameters
    ----------
    module
        The network to train (a resumed checkpoint must fit it).
    run
        JSON-ready settings of this run, stored with each checkpoint; on resume, differences from
        the checkpoint's are named in a warning (the result then differs from an uninterrupted run).
    save_checkpoints
        Directory for checkpoints, or ``None``.
    {checkpoint_every}
    checkpoint_every_steps
        Also a checkpoint every this many optimiser steps, in the middle of epochs; ``None``: none.
    resume_from
        A checkpoint directory, or a ``save_checkpoints`` directory (its latest checkpoint), or ``None``.
    subject
        What is trained on what, for the line said at the start (``"BioFormer on 2,638 cells x 2,000
        genes"``; see ``train/_progress.py``); ``run["batch_size"]`` gives
        the cells per step.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        run: dict[str, Any],
        save_checkpoints: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        checkpoint_every_steps: int | None = None,
        resume_from: str | os.PathLike | None = None,
        subject: str | None = None,
    ):
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` must be a whole number of epochs >= 1, not {checkpoint_every!r}.")
        steps = checkpoint_every_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"`checkpoint_every_steps` must be a whole number of steps >= 1 or None, not {steps!r}.")
        self.resume_path = find_checkpoint(resume_from) if resume_from is not None else None
        if self.resume_path is not None:
            saved_run = check_checkpoint_fits(self.resume_path, module)
            changed = {k: (saved_run[k], v) for k, v in run.items() if k in saved_run and saved_run[k] != v}
            if changed:
                listed = ", ".join(f"{k}={new!r} (checkpoint: {old!r})" for k, (old, new) in changed.items())
                warnings.warn(
                    f"Resuming from {self.resume_path!r} with other settings than the run that wrote it: {listed}. "
                    "Training continues, but not to the result of an uninterrupted run; pass the original settings "
                    "(and set `scvi.settings.seed` as before) for that.",
                    UserWarning,
                    stacklevel=3,
                )
        self.checkpoint_dir = None
        if save_checkpoints is not None:
            self.checkpoint_dir = os.fspath(save_checkpoints)
            os.makedirs(self.checkpoint_dir, exist_ok=True)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_every_steps = checkpoint_every_steps
        self.subject = subject
        self.batch_size = run.get("batch_size")
        self.state = ResumeState(run)
        self._watch = _Watch()
        self._finite = FiniteLossCheck(self.checkpoint_dir)

    def trainer_kwargs(self, trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``trainer_kwargs`` plus this session's callbacks, checkpoint plugin and ``ckpt_path``.

        The callbacks include bioformers' progress bar (``TrainingProgressBar``,
        in place of scvi-tools' own) unless ``enable_progress_bar=False``, which leaves the start
        line to ``logg.info``.
        """
        if "ckpt_path" in trainer_kwargs:
            raise ValueError(
                "Pass `resume_from=` (a directory written by `save_checkpoints=`) instead of `ckpt_path`: bioformers "
                "resumes only from its own checkpoints, which never need unpickling."
            )
        kwargs = progress_callbacks(trainer_kwargs, subject=self.subject, batch_size=self.batch_size)
        callbacks = kwargs.pop("callbacks", None) or []
        callbacks = [*(callbacks if isinstance(callbacks, list | tuple) else [callbacks])]
        callbacks += [self._finite, self.state, self._watch]
        if self.checkpoint_dir is not None:
            callbacks.append(
                EpochCheckpoint(self.checkpoint_dir, self.checkpoint_every, self.checkpoint_every_steps, self.state)
            )
        kwargs["callbacks"] = callbacks
        if self.checkpoint_dir is not None or self.resume_path is not None:
            plugins = kwargs.pop("plugins", None) or []
            kwargs["plugins"] = [*(plugins if isinstance(plugins, list | tuple) else [plugins]), SafeCheckpointIO()]
        if self.resume_path is not None:
            kwargs["ckpt_path"] = self.resume_path
        return kwargs

    @contextmanager
    def guard(self, model: Any) -> Iterator[None]:
        """Run training inside, quietly; after a Ctrl-C or divergence, leave ``model`` usable.

        * Lightning's routine messages and warnings are hidden inside below
          ``sc.settings.verbosity = "hint"`` (``bioformers._logging.lightning_console``).

        * ``KeyboardInterrupt`` after at least one optimiser step, in a single process: training
          stops, the model keeps the weights of its last step and the history of its finished
          epochs, is marked trained, and a warning says how far it got; the interrupt is not
          re-raised (the caller returns normally). Before any step it propagates. Under DDP
          Lightning's shutdown (all processes exit) is kept.
        * :class:`NonFiniteLossError`: the same clean-up, then the error propagates.
        * Anything else propagates untouched.

        ``SIGINT`` handling is restored afterwards (Lightning leaves it ignored).
        """
        was_trained, history = model.is_trained_, model.history_
        if self.resume_path is not None:
            # the checkpoint's history replaces the model's; scvi-tools would append to a trained model's
            model.is_trained_, model.history_ = False, None
        on_main_thread = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if on_main_thread else None
        try:
            with lightning_console():
                yield
        except BaseException as error:
            interrupt = self._watch.exception
            interrupted = isinstance(interrupt, KeyboardInterrupt) and isinstance(error, SystemExit | KeyboardInterrupt)
            if not (interrupted or isinstance(error, NonFiniteLossError)):
                if self.resume_path is not None and not self.state.restored:
                    model.is_trained_, model.history_ = was_trained, history
                raise
            trainer = self._watch.trainer
            steps = trainer.global_step if trainer is not None else 0
            self._keep_usable(model, was_trained or steps > 0, history)
            if not interrupted:
                raise
            if steps == 0:
                raise interrupt from None
            if trainer.world_size > 1:
                raise
            warnings.warn(self._interrupt_message(model, trainer), UserWarning, stacklevel=3)
        finally:
            if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
                signal.signal(signal.SIGINT, sigint)

    def _keep_usable(self, model: Any, trained: bool, history: Any) -> None:
        """What scvi-tools' ``TrainRunner`` does after a successful ``fit``, for a stopped one."""
        trainer = self._watch.trainer
        if self.resume_path is not None and not self.state.restored:
            model.history_ = history
        model.is_trained_ = trained
        model.module.eval()
        if trainer is None:
            return
        model.trainer = trainer
        model.to_device(trainer.strategy.root_device)
        datamodule = trainer.datamodule
        for attribute, name in (("train_idx", "train_indices"), ("val_idx", "validation_indices")):
            if hasattr(datamodule, attribute):
                setattr(model, name, getattr(datamodule, attribute))

    def _interrupt_message(self, model: Any, trainer: pl.Trainer) -> str:
        finished = len(model.loss_history()["train_loss"]) if hasattr(model, "loss_history") else trainer.current_epoch
        resume = (
            f" Checkpoints are in {self.checkpoint_dir!r}: `train(..., resume_from={self.checkpoint_dir!r})` with the "
            "same arguments continues from the latest one as if never interrupted."
            if self.checkpoint_dir is not None
            else ""
        )
        return (
            f"Training interrupted (KeyboardInterrupt) after {finished} of {trainer.max_epochs} epochs "
            f"({trainer.global_step} optimiser steps). The model keeps the weights of its last step and the loss "
            f"history of its finished epochs; it is marked trained and can be used, saved or trained further.{resume}"
        )
