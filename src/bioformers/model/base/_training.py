"""Training for the models over gene tokens: AdamW with warm-up and cosine decay, checkpoints, guards."""

from __future__ import annotations

import os

import numpy as np
import scvi
from scvi.model.base import UnsupervisedTrainingMixin

from ..._docs import DOC_CHECKPOINT_EVERY, DOC_LR, doc_params
from ..._private import without_data_message
from ..._validation import check_batch_size
from ...train import TrainingSession, default_precision


def default_max_epochs(n_obs: int) -> int:
    """Enough optimiser steps for a good embedding in minutes: more epochs for smaller data."""
    return int(np.clip(round(30_000 / max(n_obs, 1)), 5, 30))


def default_perturbation_epochs(n_pairs: int) -> int:
    """Fine-tuning on control -> perturbed pairs: about 80,000 pairs seen (1,250 steps of 64), 3 to 10 epochs."""
    return int(np.clip(round(80_000 / max(n_pairs, 1)), 3, 10))


class TokenTrainingMixin(UnsupervisedTrainingMixin):
    """``train`` of the models over gene tokens, on scvi-tools' :class:`~scvi.model.base.UnsupervisedTrainingMixin`.

    Adds what scvi-tools' ``train`` lacks: a default number of epochs for the data size, bf16 where
    the hardware has it, safe checkpoints and resumption, and the guards of
    ``bioformers.train.TrainingSession`` (non-finite losses, Ctrl-C).
    """

    @doc_params(lr=DOC_LR, checkpoint_every=DOC_CHECKPOINT_EVERY)
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | None = None,
        gradient_clip_val: float = 1.0,
        activation_checkpointing: bool = False,
        compile: bool = False,
        save_checkpoints: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        checkpoint_every_steps: int | None = None,
        resume_from: str | os.PathLike | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with AdamW, linear warm-up and cosine decay.

        Parameters
        ----------
        max_epochs
            Passes over the data; ``None`` picks more epochs for smaller data (5 to 30).
        batch_size
            Cells per minibatch of one process. With DDP over N processes each optimiser step
            averages N minibatches (N x ``batch_size`` cells) and an epoch has N times fewer steps.
        {lr}
        weight_decay
            AdamW weight decay.
        warmup_fraction
            Fraction of steps spent warming up.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ...; device count or ids).
        precision
            Lightning precision; ``None`` uses bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else
            fp32.
        gradient_clip_val
            Gradient norm clipping.
        activation_checkpointing
            Recompute each transformer block in the backward pass instead of storing its activations:
            less memory for long sequences, about a third more compute.
        compile
            Compile the transformer with :func:`torch.compile` (in place; the model is used compiled
            from then on). The first steps wait for compilation; on the 2-core benchmark CPU it was
            slower per step than eager mode, so it is off by default (``benchmarks/README.md``).
        save_checkpoints
            Directory (created if missing) for training checkpoints: after every ``checkpoint_every``
            epochs, and after the last, ``<save_checkpoints>/epoch_NNNN/`` receives
            ``checkpoint.safetensors`` (weights, optimizer moments, random states) and
            ``checkpoint.json`` (everything else). An existing checkpoint of the same epoch is replaced.
        {checkpoint_every}
        checkpoint_every_steps
            Training from disk (a ``datamodule``, as :func:`bioformers.tl.pretrain` of a backed AnnData
            uses): also a checkpoint every this many optimiser steps, into
            ``<save_checkpoints>/step_NNNNNNNNN/``, for epochs too long to lose. ``resume_from`` continues
            from the middle of the epoch (the loader skips the minibatches already trained on, unread),
            exactly as the uninterrupted run would. `None`: only at the ends of epochs.
        resume_from
            Continue the run that wrote this checkpoint: a ``epoch_NNNN`` directory, or a
            ``save_checkpoints`` directory (its latest checkpoint). Weights, optimizer and learning-rate
            schedule, epoch and step counters, random states and loss history are restored, so with the
            run's original arguments (``max_epochs`` is the total, not the epochs left) and
            ``scvi.settings.seed`` the result is bit-identical, on the CPU, to a run never interrupted.
            Other arguments are allowed and named in a warning. The model must have the same size and
            genes as the one that wrote the checkpoint.
        plan_kwargs
            More arguments for the training plan, :class:`~bioformers.train.WarmupCosineTrainingPlan`.
        **trainer_kwargs
            Passed to scvi-tools' :meth:`~scvi.model.base.BaseModelClass.train` and Lightning's
            :class:`~lightning.pytorch.Trainer` (e.g. ``strategy``, ``num_nodes``,
            ``train_size``, ``early_stopping``, ``callbacks``). Lightning's ``ckpt_path`` is refused: use
            ``resume_from``.

        Raises
        ------
        bioformers.train.NonFiniteLossError
            The loss or the gradients became NaN or infinite (a :class:`FloatingPointError`). Training
            stops before that step changes the weights; the message names likely causes (learning rate,
            reduced precision, input values). The model stays usable: weights of the last good step,
            history of finished epochs.
        ValueError
            ``adata`` has fewer cells than ``batch_size``.

        Notes
        -----
        **Interruptions.** Ctrl-C (``KeyboardInterrupt``) stops training and ``train`` returns
        normally with a warning saying how many epochs finished: the model keeps the weights of its
        last optimiser step and the loss history of its finished epochs (``model.history_``,
        :meth:`loss_history`), is marked trained and can embed, be saved or be trained further; a
        second Ctrl-C interrupts whatever runs next. An interrupt before the first optimiser step
        propagates. (Lightning itself would exit with ``SystemExit`` and leave Ctrl-C ignored.)
        Checkpoints are written at the ends of epochs (and, training from disk, every
        ``checkpoint_every_steps``): resume repeats the part of the epoch after the last checkpoint.

        **Console output.** Training first says what it will run (e.g. "training BioFormer on 2,638
        cells x 2,000 genes (263 held out for validation): 11 epochs of 38 steps of 64 cells"), then
        shows one progress bar over all its steps: the epoch, the training and validation losses, the
        cells per second and the time left. ``enable_progress_bar=False`` hides the bar and logs the
        start line at ``sc.settings.verbosity = "info"``. Lightning's banner, tips and routine
        warnings are shown only from ``sc.settings.verbosity = "hint"`` on.

        **Checkpoint files** are never unpickled: tensors are read by safetensors, the rest by
        ``json``. Lightning's ``.ckpt`` is a torch pickle, which ``torch.load(weights_only=True)``
        only restricts; see "Checkpoints and interruptions" in ``docs/scaling.md``.

        ``strategy="ddp"`` with ``devices=N`` trains on N processes, each on its share of the cells
        (scvi-tools' distributed sampler), with gradients and logged losses averaged across them.
        Lightning starts the extra processes by running the script again, so every process continues
        past ``train``; all hold the same trained weights, only global rank 0 holds the loss history.
        Guard writes with :attr:`is_global_zero` (:meth:`save` already does). See ``docs/scaling.md``.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> bf.pp.bin(adata)
        >>> bf.BioFormer.setup_anndata(adata)
        >>> model = bf.BioFormer(adata, n_hidden=16, n_layers=1, n_heads=2)
        >>> model.train(max_epochs=2, batch_size=32, train_size=0.9)
        >>> {name: len(losses) for name, losses in model.loss_history().items()}
        {'train_loss': 2, 'validation_loss': 2}
        """
        datamodule = trainer_kwargs.get("datamodule")
        if self.adata is None and datamodule is None:
            raise ValueError(without_data_message(self, "has no data to train on"))
        if checkpoint_every_steps is not None and (datamodule is None or save_checkpoints is None):
            raise ValueError(
                "`checkpoint_every_steps` writes checkpoints in the middle of epochs of training from disk (a backed "
                "AnnData, or a `datamodule`), into `save_checkpoints`: pass both, or use `checkpoint_every` (epochs)."
            )
        # a data module (cells streamed from disk) replaces the registered AnnData and its validation split
        n_obs = self.adata.n_obs if datamodule is None else datamodule.n_obs
        check_batch_size(n_obs, batch_size)
        plan_kwargs = {"lr": lr, "weight_decay": weight_decay, "warmup_fraction": warmup_fraction} | (plan_kwargs or {})
        # a validation loss every epoch, when there are validation cells (train_size < 1)
        validation_every_epoch = (
            {"check_val_every_n_epoch": 1}
            if datamodule is None and (trainer_kwargs.get("train_size") or 0.9) < 1
            else {}
        )
        max_epochs = max_epochs or default_max_epochs(n_obs)
        precision = precision or default_precision(accelerator)
        session = TrainingSession(
            self.module,
            run={
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "n_obs": n_obs,
                "seed": scvi.settings.seed,
                "train_size": trainer_kwargs.get("train_size"),
                "validation_size": trainer_kwargs.get("validation_size"),
                "precision": precision,
                "gradient_clip_val": gradient_clip_val,
                **{k: v for k, v in plan_kwargs.items() if v is None or isinstance(v, bool | int | float | str)},
            },
            save_checkpoints=save_checkpoints,
            checkpoint_every=checkpoint_every,
            checkpoint_every_steps=checkpoint_every_steps,
            resume_from=resume_from,
            subject=f"{type(self).__name__} on {n_obs:,} cells x {self.genes_.size:,} genes"
            + (" read from disk" if datamodule is not None else ""),
        )
        trainer_kwargs = session.trainer_kwargs(validation_every_epoch | trainer_kwargs)
        self.module.encoder.activation_checkpointing = activation_checkpointing
        if compile:
            self.module.encoder.compile()
        train_in_session(
            self,
            session,
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            plan_kwargs=plan_kwargs,
            precision=precision,
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        self._finish_training()

    def _finish_training(self) -> None:
        """Work after the optimiser's last step (a hook: the encoder fits its count decoder here)."""


def train_in_session(model: UnsupervisedTrainingMixin, session: TrainingSession, **train_kwargs) -> None:
    """scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train` of ``model`` under ``session``'s guards.

    ``train_kwargs`` go to scvi-tools and on to Lightning; the trainer arguments among them have
    passed through ``session.trainer_kwargs`` (its callbacks and checkpoints).
    """
    # Lightning 2.6 keeps the modules' mode, and a trained model is left in eval mode (no dropout)
    model.module.train()
    with session.guard(model):
        UnsupervisedTrainingMixin.train(model, **train_kwargs)
