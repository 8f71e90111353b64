"""Perturbation fine-tuning and prediction: control cells with perturbed genes marked by external tokens."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.train import TrainRunner

from ..._docs import DOC_BATCH_SIZE, doc_params
from ..._keys import PERTURBATION_KEY
from ...data import PerturbationPairs, perturbation_targets
from ...train import PerturbationTrainingPlan, TrainingSession, default_precision
from ._training import default_perturbation_epochs

if TYPE_CHECKING:
    from collections.abc import Sequence


class PerturbationMixin:
    """What a model set up with ``perturbation_key`` does: target tokens, fine-tuning on pairs, responses.

    The model's network is then a :class:`~bioformers.module.BioFormerPerturbationModule`; for a model
    set up without ``perturbation_key``, ``target_indices`` says how to get one.
    """

    @property
    def control_(self) -> str | None:
        """The control label of the registered perturbation column; ``None`` without one."""
        args = self.registry_["setup_args"]
        return args.get("control") if args.get("perturbation_key") is not None else None

    def registered_targets(self) -> list[str]:
        """Every gene named by a registered perturbation label, in order of first appearance.

        Returns
        -------
        list of str
            The target genes; empty for a model set up without ``perturbation_key``.
        """
        if self.control_ is None:
            return []
        labels = self._state_registry(PERTURBATION_KEY)["categorical_mapping"]
        return list(dict.fromkeys(t for label in labels for t in perturbation_targets(label, self.control_)))

    def target_indices(self, labels: Sequence[str]) -> np.ndarray:
        """Vocabulary indices of the targets of each perturbation label.

        Parameters
        ----------
        labels
            Perturbation labels: ``control``, a gene, or genes joined by ``+``.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``int64`` ``(len(labels), slots)``: indices into ``model.vocabulary_``, -1 where a label
            has fewer targets than the widest one.

        Raises
        ------
        ValueError
            The model was not set up for perturbations, or has no gene token for a target (the
            message names them).
        """
        if self.control_ is None:
            raise ValueError("This model was not set up for perturbations. Train one with `bf.tl.train_perturbation`.")
        index = {gene: i for i, gene in enumerate(self.vocabulary_)}
        parsed = [perturbation_targets(label, self.control_) for label in labels]
        unknown = sorted({t for targets in parsed for t in targets if t not in index})
        if unknown:
            raise ValueError(
                f"The model has no gene token for {unknown}: they are neither measured genes of the model nor "
                f"targets of its training perturbations, so nothing tells the model what they are. Predict "
                f"perturbations of measured genes or of the training targets (`model.vocabulary_`)."
            )
        slots = max(1, max(map(len, parsed), default=1))
        table = np.full((len(labels), slots), -1, dtype=np.int64)
        for row, targets in enumerate(parsed):
            table[row, : len(targets)] = [index[t] for t in targets]
        return table

    def train_perturbation(
        self,
        expression,
        indices: np.ndarray,
        *,
        weights: np.ndarray,
        max_epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | None = None,
        gradient_clip_val: float = 1.0,
        save_checkpoints: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume_from: str | os.PathLike | None = None,
        **trainer_kwargs,
    ) -> None:
        """Fine-tune on control -> perturbed pairs of the registered AnnData.

        :func:`bioformers.tl.train_perturbation` prepares the arguments and calls this.

        Parameters
        ----------
        expression
            Log-normalised expression of every cell of the registered AnnData (sparse).
        indices
            Training cells (control and perturbed): the targets of the pairs. Their control cells are
            also the pairs' sources and define the control mean the predictions start from.
        weights
            Loss weight of each gene per registered perturbation category, ``(categories, n_genes)``.
        max_epochs
            Passes over the pairs; ``None``: 3 to 10, about 80,000 pairs in all (4 epochs for 20,000 cells).
        batch_size, lr, weight_decay, warmup_fraction, accelerator, devices, precision, gradient_clip_val
            As in :meth:`train`.
        seed
            Seeds the pairing of cells.
        save_checkpoints, checkpoint_every, resume_from
            As in :meth:`train`. A checkpoint also holds the states of the generators that order the
            cells and draw their control cells, so resuming with the original arguments reproduces
            the uninterrupted run exactly (on the CPU).
        **trainer_kwargs
            Passed to Lightning's :class:`~lightning.pytorch.Trainer`.

        Returns
        -------
        None
            The model is trained in place; nothing is written into the AnnData.

        Raises
        ------
        bioformers.train.NonFiniteLossError
            As in :meth:`train`; Ctrl-C is handled as there too.
        """
        indices = np.asarray(indices)
        max_epochs = max_epochs or default_perturbation_epochs(indices.size)
        precision = precision or default_precision(accelerator)
        session = TrainingSession(
            self.module,
            run={
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_fraction": warmup_fraction,
                "seed": seed,
                "precision": precision,
                "gradient_clip_val": gradient_clip_val,
                "n_cells": int(indices.size),
                "cells": hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest(),
            },
            save_checkpoints=save_checkpoints,
            checkpoint_every=checkpoint_every,
            resume_from=resume_from,
            subject=f"{type(self).__name__} on {indices.size:,} cells x {self.genes_.size:,} genes, each paired "
            "with a control cell",
        )
        codes = np.asarray(self.adata_manager.get_from_registry(PERTURBATION_KEY)).ravel().astype(int)
        labels = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        control_code = int(np.flatnonzero(np.asarray(labels) == self.control_)[0])
        controls = indices[codes[indices] == control_code]
        bins = sparse.csr_matrix(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        expression = sparse.csr_matrix(expression)
        self.module.control_mean.copy_(torch.from_numpy(np.asarray(expression[controls].mean(axis=0)).ravel()))
        self.module.mean_response.copy_(torch.from_numpy(mean_response(expression, codes, indices, control_code)))
        pairs = PerturbationPairs(
            bins[controls].astype(np.float32),
            expression[indices],
            codes[indices],
            self.target_indices(list(labels)),
            weights,
            batch_size=batch_size,
            seed=seed,
        )
        plan = PerturbationTrainingPlan(self.module, lr=lr, weight_decay=weight_decay, warmup_fraction=warmup_fraction)
        # Lightning 2.6 keeps the modules' mode, and a trained model is left in eval mode (no dropout)
        self.module.train()
        # the trainer is made inside the guard, which hides the banner it prints
        with warnings.catch_warnings(), session.guard(self):
            # the plan inherits scvi-tools' validation step; pairs have no validation set to run it on
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            TrainRunner(
                self,
                training_plan=plan,
                data_splitter=pairs,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                gradient_clip_val=gradient_clip_val,
                **session.trainer_kwargs(trainer_kwargs),
            )()

    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
    def get_perturbation_response(self, bins, targets: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """Predicted log-normalised expression of control cells after perturbing ``targets``.

        Parameters
        ----------
        bins
            Binned control cells, ``(cells, n_genes)`` (dense or sparse).
        targets
            Vocabulary indices per cell, ``(cells, slots)``, -1 where empty (see :meth:`target_indices`).
        {batch_size}

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(cells, n_genes)``: ``log1p`` of counts per 10,000 of every model gene.
        """
        self.module.eval()
        bins = sparse.csr_matrix(bins)
        out = []
        with self.inference_context():
            for start in range(0, bins.shape[0], batch_size):
                part = slice(start, start + batch_size)
                block = torch.from_numpy(bins[part].toarray()).to(self.device)
                out.append(
                    self.module.predict_response(block, torch.as_tensor(targets[part], device=self.device))
                    .float()
                    .cpu()
                )
        return torch.cat(out).numpy() if out else np.zeros((0, self.genes_.size), dtype=np.float32)


def mean_response(expression, codes: np.ndarray, indices: np.ndarray, control_code: int) -> np.ndarray:
    """Mean over the perturbations among ``indices`` of each one's mean expression minus the control mean."""
    means = {
        code: np.asarray(expression[indices[codes[indices] == code]].mean(axis=0)).ravel()
        for code in np.unique(codes[indices])
    }
    control = means.pop(control_code)
    if not means:
        return np.zeros_like(control, dtype=np.float32)
    return (np.mean(list(means.values()), axis=0) - control).astype(np.float32)
