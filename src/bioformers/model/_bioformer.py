"""``BioFormer``: the user-facing scvi-tools model."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import anndata
import numpy as np
import pandas as pd
import scvi
import torch
from lightning.pytorch.utilities import rank_zero_only
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.train import TrainRunner

from .._keys import PERTURBATION_KEY, Keys
from .._record import package_version
from .._validation import check_anndata, check_control, check_dtype, check_obs_key, did_you_mean, get_matrix, shown
from ..data import PerturbationPairs, binned_batches, perturbation_targets, prediction_masks
from ..module import BioFormerDecoderModule, BioFormerModule
from ..pp._genes import DEFAULT_MIN_GENE_COVERAGE, GeneAlignment, align_genes, match_genes
from ..train import BioFormerTrainingPlan, PerturbationTrainingPlan, TrainingSession, default_precision
from ._serialization import check_model_class, check_state_dict, check_version, read_model, write_model

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: External-token categories of a perturbation model: 0 = not perturbed, 1 = perturbed.
N_PERTURBATION_CATEGORIES = 2
#: The training AnnData that ``save(..., save_anndata=True)`` writes next to the model files.
SAVED_ANNDATA_FILE = "adata.h5ad"


def default_max_epochs(n_obs: int) -> int:
    """Enough optimiser steps for a good embedding in minutes: more epochs for smaller data."""
    return int(np.clip(round(30_000 / max(n_obs, 1)), 5, 30))


class BioFormer(UnsupervisedTrainingMixin, BaseModelClass):
    """A BioFormer transformer trained on binned expression of one AnnData.

    Cells are sequences ``[CLS, g1, ..., gM]`` of gene tokens carrying binned expression values
    (:func:`bioformers.pp.bin`); the model learns by masked gene modelling and by decoding each
    cell's expression from its CLS state, whose final hidden state is the cell embedding.

    :func:`bioformers.tl.pretrain` bins, sets up, builds, trains and embeds in one call; this class
    is the model it returns, for steps of your own (saving, loading, custom training).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Width of the token representations (and of the cell embedding).
    n_layers
        Number of transformer blocks.
    n_heads
        Attention heads per block.
    dropout
        Dropout rate.
    max_seq_len
        Longest sequence (CLS included). Cells with more genes keep every expressed gene plus
        sampled unexpressed ones.
    value_encoder
        ``"linear"`` on the bin index or ``"embedding"`` per bin.
    mask_ratio
        Fraction of positions masked per cell.
    nonzero_ratio
        Fraction of masked positions that are expressed genes.
    expression_weight
        Weight of the objective that decodes expression from CLS.
    n_bins
        Number of bin values; read from the data when ``None``.
    architecture
        ``"encoder"`` (bidirectional attention, masked gene modelling, CLS embedding; the default)
        or ``"decoder"`` (causal attention over the cell's genes in descending order of value,
        next-gene objective, generates cells: :func:`bioformers.tl.generate`; see
        :class:`~bioformers.module.BioFormerDecoderModule`). The decoder conditions on the registered
        ``labels_key`` and ``batch_key`` through tokens after its start token; ``mask_ratio``,
        ``nonzero_ratio`` and ``expression_weight`` apply to the encoder only.
    batch_adversarial_weight
        Encoder with a registered ``batch_key`` only: weight of an adversarial batch classifier on the
        cell embedding (0: off). On PBMC from three 10x chemistries the batch token alone barely mixed
        them (iLISI 0.05, against 0.04 without a batch key; one quick run), the token with the classifier
        at weight 1 reached iLISI 0.41 and the cell types clustered better too (NMI 0.77 vs 0.57)
        (``benchmarks/results/pbmc_integration.md``).
        See :class:`~bioformers.module.BioFormerModule`.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> bf.pp.bin(adata)
    >>> bf.BioFormer.setup_anndata(adata)
    >>> model = bf.BioFormer(adata, n_hidden=16, n_layers=1, n_heads=2)
    >>> model.train(max_epochs=1, batch_size=32)
    >>> adata.obsm["X_bioformers"] = model.get_latent_representation()
    >>> adata.obsm["X_bioformers"].shape
    (200, 16)
    >>> len(model.loss_history()["train_loss"])
    1
    """

    _module_cls = BioFormerModule
    _training_plan_cls = BioFormerTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        n_hidden: int = 64,
        n_layers: int = 4,
        n_heads: int = 2,
        dropout: float = 0.1,
        max_seq_len: int = 256,
        value_encoder: Literal["linear", "embedding"] = "embedding",
        mask_ratio: float = 0.1,
        nonzero_ratio: float = 0.5,
        expression_weight: float = 10.0,
        n_bins: int | None = None,
        architecture: Literal["encoder", "decoder"] = "encoder",
        batch_adversarial_weight: float = 1.0,
    ):
        super().__init__(adata)
        if architecture not in ("encoder", "decoder"):
            raise ValueError(f"`architecture` must be 'encoder' or 'decoder', not {architecture!r}.")
        binned = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if n_bins is None:
            n_bins = int(binned.max()) + 1
        layer = self.registry_["setup_args"]["layer"]
        #: How the training data was binned (its ``uns['bioformers_binned']['params']``); queries are binned alike.
        self.binning_ = dict(adata.uns.get(layer, {}).get("params", {}))
        #: The model's genes, in order (the training data's ``var_names``).
        self.genes_ = np.asarray(adata.var_names).astype(str)
        # perturbation targets that are not measured genes still get a gene token
        extra = [t for t in self.registered_targets() if t not in set(self.genes_)]
        #: Every gene token (the model's genes, then perturbation targets that are not measured genes).
        self.vocabulary_ = np.concatenate([self.genes_, np.asarray(extra, dtype=str)])
        #: The perturbation split and training record (set by :func:`bioformers.tl.train_perturbation`).
        self.perturbation_: dict = {}
        #: ``"encoder"`` or ``"decoder"``.
        self.architecture = architecture
        args = self.registry_["setup_args"]
        n_batch = self.summary_stats.n_batch if args.get("batch_key") is not None else 0
        if architecture == "decoder":
            if self.control_ is not None:
                raise ValueError(
                    "Perturbation fine-tuning needs the encoder: set up the AnnData without `perturbation_key` for a "
                    "decoder, or use `architecture='encoder'`."
                )
            self.module = BioFormerDecoderModule(
                n_genes=adata.n_vars,
                n_bins=n_bins,
                n_hidden=n_hidden,
                n_layers=n_layers,
                n_heads=n_heads,
                dropout=dropout,
                max_seq_len=max_seq_len,
                value_encoder=value_encoder,
                n_labels=self.summary_stats.n_labels if args.get("labels_key") is not None else 0,
                n_batch=n_batch,
            )
        else:
            self.module = self._module_cls(
                n_genes=adata.n_vars,
                n_batch=n_batch,
                batch_adversarial_weight=batch_adversarial_weight,
                n_extra_genes=len(extra),
                n_external=N_PERTURBATION_CATEGORIES if self.control_ is not None else 0,
                n_bins=n_bins,
                n_hidden=n_hidden,
                n_layers=n_layers,
                n_heads=n_heads,
                dropout=dropout,
                max_seq_len=max_seq_len,
                value_encoder=value_encoder,
                mask_ratio=mask_ratio,
                nonzero_ratio=nonzero_ratio,
                expression_weight=expression_weight,
            )
        self._model_summary_string = (
            f"BioFormer ({architecture}): {adata.n_vars} genes, {n_bins} bins, n_hidden={n_hidden}, "
            f"n_layers={n_layers}, n_heads={n_heads}, max_seq_len={max_seq_len}, value_encoder={value_encoder!r}"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        perturbation_key: str | None = None,
        control: str = "control",
        **kwargs,
    ) -> None:
        """Register the binned values (and optional batch, label and perturbation columns) with scvi-tools.

        scvi-tools writes its bookkeeping into ``adata`` (``uns['_scvi_uuid']``, ``obs['_scvi_batch']``,
        ...), so a view is refused: call ``.copy()`` on it first. Every check runs before that.

        Parameters
        ----------
        adata
            AnnData with binned values from :func:`bioformers.pp.bin`: non-negative whole numbers,
            no cell without an expressed gene.
        layer
            Layer holding the binned values; ``None`` means ``"bioformers_binned"``.
        batch_key
            Column of ``adata.obs`` with batches, without missing values (as for the other columns).
        labels_key
            Column of ``adata.obs`` with cell labels.
        perturbation_key
            Column of ``adata.obs`` naming each cell's perturbation: ``control`` or the perturbed
            gene(s), combinations joined by ``+`` (``"STAT1+JAK2"``). A model set up with it has
            external tokens that mark perturbed genes, and a gene token for every target that is not
            a measured gene; see :func:`bioformers.tl.train_perturbation`.
        control
            The label of control cells in ``perturbation_key``.
        **kwargs
            Passed to scvi-tools' :meth:`~scvi.data.AnnDataManager.register_fields` (e.g.
            ``source_registry``, which :meth:`load` uses to register data as at training).

        Returns
        -------
        None
            Registers ``adata`` with scvi-tools, which sets:

            ``adata.obs['_scvi_batch']``, ``adata.obs['_scvi_labels']`` : ``int8``
                Codes of ``batch_key`` and ``labels_key`` (all 0 when not given).
            ``adata.obs['_scvi_perturbation']`` : ``int8``
                Codes of ``perturbation_key``, when given.
            ``adata.uns['_scvi_uuid']``, ``adata.uns['_scvi_manager_uuid']`` : :class:`str`
                The identifiers that tie ``adata`` to its registration.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=100, n_vars=30)
        >>> bf.pp.bin(adata)
        >>> bf.BioFormer.setup_anndata(adata, batch_key="batch")
        >>> adata.obs["_scvi_batch"].value_counts().sort_index().tolist()
        [50, 50]
        """
        check_anndata(adata, backed=True)
        layer = Keys().binned if layer is None else layer
        if layer not in adata.layers:
            raise KeyError(
                f"Layer {layer!r} with binned values not found (layers: {shown(adata.layers.keys())})."
                f"{did_you_mean(layer, adata.layers.keys())} Run `bf.pp.bin(adata)` first, or pass `layer=` "
                "naming the layer `bf.pp.bin` wrote."
            )
        _check_bins(get_matrix(adata, layer), layer)
        check_obs_key(adata, batch_key, argument="batch_key")
        check_obs_key(adata, labels_key, argument="labels_key")
        check_obs_key(adata, perturbation_key, argument="perturbation_key")
        if perturbation_key is not None:
            check_control(adata.obs[perturbation_key], control, perturbation_key)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        if perturbation_key is not None:
            fields.append(CategoricalObsField(PERTURBATION_KEY, perturbation_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

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
        lr
            Peak learning rate.
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
        checkpoint_every
            Epochs between checkpoints.
        resume_from
            Continue the run that wrote this checkpoint: a ``epoch_NNNN`` directory, or a
            ``save_checkpoints`` directory (its latest checkpoint). Weights, optimizer and learning-rate
            schedule, epoch and step counters, random states and loss history are restored, so with the
            run's original arguments (``max_epochs`` is the total, not the epochs left) and
            ``scvi.settings.seed`` the result is bit-identical, on the CPU, to a run never interrupted.
            Other arguments are allowed and named in a warning. The model must have the same size and
            genes as the one that wrote the checkpoint.
        plan_kwargs
            More arguments for the training plan, :class:`~bioformers.train.BioFormerTrainingPlan`.
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
        Checkpoints are never written mid-epoch: resume repeats the epoch that was interrupted.

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
        n_obs = self.adata.n_obs
        if n_obs < batch_size:
            raise ValueError(
                f"The AnnData has {n_obs} cells, fewer than one batch (batch_size={batch_size}). "
                f"Pass `batch_size={max(n_obs // 2, 1)}` or smaller."
            )
        plan_kwargs = {"lr": lr, "weight_decay": weight_decay, "warmup_fraction": warmup_fraction} | (plan_kwargs or {})
        # a validation loss every epoch, when there are validation cells (train_size < 1)
        validation_every_epoch = {"check_val_every_n_epoch": 1} if (trainer_kwargs.get("train_size") or 0.9) < 1 else {}
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
            resume_from=resume_from,
        )
        trainer_kwargs = session.trainer_kwargs(validation_every_epoch | trainer_kwargs)
        self.module.encoder.activation_checkpointing = activation_checkpointing
        if compile:
            self.module.encoder.compile()
        # Lightning 2.6 keeps the modules' mode, and a trained model is left in eval mode (no dropout)
        self.module.train()
        with session.guard(self):
            super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                plan_kwargs=plan_kwargs,
                precision=precision,
                gradient_clip_val=gradient_clip_val,
                **trainer_kwargs,
            )

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
        labels = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
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
        max_epochs: int = 10,
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
        max_epochs, batch_size, lr, weight_decay, warmup_fraction, accelerator, devices, precision, gradient_clip_val
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
        )
        codes = np.asarray(self.adata_manager.get_from_registry(PERTURBATION_KEY)).ravel().astype(int)
        labels = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        control_code = int(np.flatnonzero(np.asarray(labels) == self.control_)[0])
        controls = indices[codes[indices] == control_code]
        bins = sparse.csr_matrix(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        expression = sparse.csr_matrix(expression)
        self.module.control_mean.copy_(torch.from_numpy(np.asarray(expression[controls].mean(axis=0)).ravel()))
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
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=pairs,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            precision=precision,
            gradient_clip_val=gradient_clip_val,
            **session.trainer_kwargs(trainer_kwargs),
        )
        # Lightning 2.6 keeps the modules' mode, and a trained model is left in eval mode (no dropout)
        self.module.train()
        with warnings.catch_warnings(), session.guard(self):
            # the plan inherits scvi-tools' validation step; pairs have no validation set to run it on
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            runner()

    def condition_categories(self, kind: Literal["labels", "batch"]) -> list[str]:
        """The categories of the registered ``labels_key`` or ``batch_key`` column.

        Parameters
        ----------
        kind
            ``"labels"`` or ``"batch"``.

        Returns
        -------
        list of str
            The categories, in the order of their codes; empty when the column was not registered.
        """
        key = {"labels": "labels_key", "batch": "batch_key"}[kind]
        if self.registry_["setup_args"].get(key) is None:
            return []
        registry_key = REGISTRY_KEYS.LABELS_KEY if kind == "labels" else REGISTRY_KEYS.BATCH_KEY
        return [str(c) for c in self.adata_manager.get_state_registry(registry_key).categorical_mapping]

    def condition_codes(self, kind: Literal["labels", "batch"], values: Sequence[str | None]) -> np.ndarray:
        """Codes of condition values for the decoder.

        Parameters
        ----------
        kind
            ``"labels"`` or ``"batch"``.
        values
            One category of the registered column per cell, or ``None`` for an unknown condition.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``int64`` codes, one per value; ``None`` gets the code after the last category (unknown).

        Raises
        ------
        ValueError
            A value is not a known category (the message names the known ones), or a value is given
            for a column the model was not set up with.
        """
        categories = self.condition_categories(kind)
        key = {"labels": "labels_key", "batch": "batch_key"}[kind]
        if not categories:
            if any(v is not None for v in values):
                raise ValueError(
                    f"The model was trained without `{key}`, so it cannot condition on it. Train the decoder with "
                    f"`bf.tl.pretrain(adata, architecture='decoder', {key}=...)`, or generate without a condition."
                )
            return np.zeros(len(values), dtype=np.int64)
        index = {c: i for i, c in enumerate(categories)}
        unknown = sorted({str(v) for v in values if v is not None and str(v) not in index})
        if unknown:
            raise ValueError(
                f"Unknown {key} value(s) {unknown}; the model knows {categories}.{did_you_mean(unknown[0], categories)}"
            )
        return np.array([len(categories) if v is None else index[str(v)] for v in values], dtype=np.int64)

    @torch.inference_mode()
    def generate(
        self,
        n_cells: int,
        *,
        labels: Sequence[str | None] | None = None,
        batch: Sequence[str | None] | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 256,
    ) -> sparse.csr_matrix:
        """Sample binned cells from the decoder.

        :func:`bioformers.tl.generate` wraps this into an AnnData. Same seed, same cells (on one machine).

        Parameters
        ----------
        n_cells
            Number of cells to draw.
        labels
            Each cell's label: a value of the registered ``labels_key`` column, or ``None`` for
            unconditional; ``None`` (instead of a list) leaves all unknown.
        batch
            Each cell's batch, the same way for the registered ``batch_key`` column.
        temperature
            Softmax temperature of every draw; below 1 sharpens towards the most likely genes and bins.
        seed
            Seed of the draws.
        batch_size
            Cells drawn at once.

        Returns
        -------
        :class:`~scipy.sparse.csr_matrix`
            ``int16`` ``(n_cells, n_genes)``, the bins of the model's genes (``model.genes_``).

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(
        ...     adata, architecture="decoder", labels_key="cell_type", n_layers=1, n_hidden=16, max_epochs=1
        ... )
        >>> bins = model.generate(3, labels=["type_0", "type_1", None])
        >>> bins.shape, bins.dtype
        ((3, 50), dtype('int16'))
        """
        self._check_if_trained(warn=False)
        self.require_decoder("Generating cells")
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, not {temperature}.")
        labels = self.condition_codes("labels", [None] * n_cells if labels is None else list(labels))
        batch = self.condition_codes("batch", [None] * n_cells if batch is None else list(batch))
        if len(labels) != n_cells or len(batch) != n_cells:
            raise ValueError(f"`labels` and `batch` need one value per cell ({n_cells}).")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.module.eval()
        rows, cols, data = [], [], []
        with self._inference_context():
            for start in range(0, n_cells, batch_size):
                part = slice(start, min(start + batch_size, n_cells))
                genes, values = self.module.sample(
                    part.stop - part.start,
                    labels=torch.from_numpy(labels[part]) if self.module.n_labels else None,
                    batch_index=torch.from_numpy(batch[part]) if self.module.n_batch else None,
                    temperature=temperature,
                    generator=generator,
                )
                cell, step = (values > 0).nonzero(as_tuple=True)
                rows.append((cell + start).cpu().numpy())
                cols.append(genes[cell, step].cpu().numpy())
                data.append(values[cell, step].cpu().numpy())
        shape = (n_cells, self.genes_.size)
        if not rows:
            return sparse.csr_matrix(shape, dtype=np.int16)
        matrix = sparse.coo_matrix(
            (np.concatenate(data).astype(np.int16), (np.concatenate(rows), np.concatenate(cols))), shape=shape
        )
        return matrix.tocsr()

    def require_decoder(self, what: str) -> None:
        """Raise a ``ValueError`` saying that ``what`` needs the decoder, for an encoder-only model.

        Parameters
        ----------
        what
            The step that needs it, as the message's subject (e.g. ``"Generating cells"``).
        """
        if self.architecture != "decoder":
            raise ValueError(
                f"{what} needs the decoder-only BioFormer; this model is an encoder. Train one with "
                "`bf.tl.pretrain(adata, architecture='decoder')` (add `labels_key=` to condition on cell types)."
            )

    @torch.inference_mode()
    def get_perturbation_response(self, bins, targets: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """Predicted log-normalised expression of control cells after perturbing ``targets``.

        Parameters
        ----------
        bins
            Binned control cells, ``(cells, n_genes)`` (dense or sparse).
        targets
            Vocabulary indices per cell, ``(cells, slots)``, -1 where empty (see :meth:`target_indices`).
        batch_size
            Cells per forward pass.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(cells, n_genes)``: ``log1p`` of counts per 10,000 of every model gene.
        """
        self.module.eval()
        bins = sparse.csr_matrix(bins)
        out = []
        with self._inference_context():
            for start in range(0, bins.shape[0], batch_size):
                part = slice(start, start + batch_size)
                block = torch.from_numpy(bins[part].toarray()).to(self.device)
                out.append(
                    self.module.predict_response(block, torch.as_tensor(targets[part], device=self.device))
                    .float()
                    .cpu()
                )
        return torch.cat(out).numpy() if out else np.zeros((0, self.genes_.size), dtype=np.float32)

    def align_genes(
        self,
        adata: AnnData,
        *,
        gene_symbols: str | None = None,
        min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    ) -> GeneAlignment:
        """Match the genes of a query to the model's by name, report the coverage, refuse too little.

        What :func:`bioformers.tl.embed`, :func:`bioformers.tl.predict`, :meth:`get_latent_representation`
        and :meth:`get_predicted_bins` do with a query's genes. Never by position: genes are matched by
        name (``adata.var_names`` or the ``gene_symbols`` column of ``adata.var``), Ensembl IDs without
        their version suffix (``ENSG00000141510.16`` matches ``ENSG00000141510``), other names exactly.
        Model genes the query lacks are read as unexpressed (bin 0); query genes the model does not
        know are ignored. Logs the match when every model gene was found in another layout, warns when
        some are missing.

        Parameters
        ----------
        adata
            The query, in memory or backed.
        gene_symbols
            Column of ``adata.var`` with the gene names the model knows (e.g. ``"feature_name"``, or
            ``"gene_ids"`` for a model trained on Ensembl IDs); ``None`` uses ``adata.var_names``.
        min_gene_coverage
            Smallest fraction of the model's genes the query must have; below it a ``ValueError`` gives
            the coverage, examples of missing genes and what to do.

        Returns
        -------
        :class:`~bioformers.pp._genes.GeneAlignment`
            ``columns`` (the query column of each model gene, -1 where missing), ``coverage``,
            ``missing``, and ``take`` / ``put`` to rearrange matrices between the two layouts.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> query = bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1)[:, 5:].copy()  # lacks 5 genes
        >>> alignment = model.align_genes(query)
        >>> float(alignment.coverage), alignment.missing.tolist()
        (0.9, ['gene_0', 'gene_1', 'gene_2', 'gene_3', 'gene_4'])
        """
        alignment = align_genes(adata, self.genes_, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
        alignment.report()
        return alignment

    def check_genes(self, adata: AnnData) -> None:
        """Raise unless ``adata`` has exactly the model's genes, in the model's order.

        Ensembl version suffixes aside (see :meth:`align_genes`), names must match position by position.
        Steps that write one result per gene of ``adata`` against the model's own genes (attention
        GRN, gene embeddings and programs, perturbation fine-tuning and prediction) need this;
        embedding and prediction align genes by name instead (:meth:`align_genes`).

        Parameters
        ----------
        adata
            The AnnData to check.

        Raises
        ------
        ValueError
            ``adata`` lacks some of the model's genes, has others, or has them in another order; the
            message says how to fix it.
        """
        alignment = match_genes(adata, self.genes_)
        if alignment.is_identity:
            return
        if alignment.missing.size:
            raise ValueError(
                f"The AnnData lacks {alignment.missing.size} of the model's {self.genes_.size} genes "
                f"(e.g. {alignment.missing[:5].tolist()}), and this step needs exactly the model's genes, in the "
                "model's order. Give it the model's genes, e.g. by adding them as zero columns. (`bf.tl.embed` and "
                "`bf.tl.predict` match genes by name and accept missing ones.)"
            )
        raise ValueError(
            f"The AnnData's genes differ from the model's ({adata.n_vars} vs {self.genes_.size} genes, or in another "
            "order), and this step needs exactly the model's genes, in the model's order. Subset and reorder it with "
            "`adata[:, model.genes_].copy()`."
        )

    def _inference_context(self):
        kind = torch.device(self.device).type
        if default_precision("cuda" if kind == "cuda" else "cpu") == "bf16-mixed":
            return torch.autocast(kind, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        gene_symbols: str | None = None,
        min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
        genes: GeneAlignment | None = None,
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> np.ndarray:
        """CLS embedding of each cell, ``(n_cells, n_hidden)``.

        Deterministic: each cell's sequence is fixed by its own values, masking is off, and the
        same input gives bit-identical output, in memory or streamed, whatever the batch or chunk size.

        Parameters
        ----------
        adata
            Cells to embed; ``None`` means the training data. Its genes are matched to the model's by
            name (:meth:`align_genes`). An in-memory AnnData with exactly the model's genes and the
            model's binned layer goes through scvi-tools' data loader. Any other (backed,
            ``anndata.read_h5ad(path, backed="r")``; without the binned layer; with other genes) is
            read ``chunk_size`` cells at a time, its columns put in the model's gene order and binned
            like the training data, so memory does not grow with the number of cells beyond the result.
        indices
            Cells to embed; ``None`` means all.
        batch_size
            Cells per forward pass.
        gene_symbols, min_gene_coverage
            How genes are matched and how many must be found (:meth:`align_genes`).
        genes
            The alignment of ``adata`` from :meth:`align_genes`, when the caller already has it;
            ``gene_symbols`` and ``min_gene_coverage`` are then not used.
        counts_layer
            Layer with raw counts to bin when ``adata`` lacks the binned layer; ``None`` uses ``adata.X``.
        chunk_size
            Cells read and binned at a time when streaming (whole batches, at least one); ``None``: 4,096.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(n_cells, n_hidden)``, in the order of ``adata``'s cells (or of ``indices``).
            Nothing is written into ``adata``; :func:`bioformers.tl.embed` writes it into ``obsm``.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> model.get_latent_representation().shape
        (200, 16)
        >>> query = bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1)  # raw counts: binned on the fly
        >>> model.get_latent_representation(query, indices=range(10)).shape
        (10, 16)
        """
        if adata is not None and genes is None:
            genes = self.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
        batches = self._batches(
            adata, indices, batch_size or 256, genes=genes, counts_layer=counts_layer, chunk_size=chunk_size
        )
        chunks = []
        with self._inference_context():
            for bins in batches:
                # clone: the CLS row is a view that would keep the batch's hidden states (all tokens) alive
                chunks.append(self.module.embed(bins).float().cpu().clone())
        return torch.cat(chunks).numpy()

    def require_encoder(self, what: str) -> None:
        """Raise a ``ValueError`` saying that ``what`` needs the encoder, for a decoder-only model.

        Parameters
        ----------
        what
            The step that needs it, as the message's subject (e.g. ``"Masked prediction"``).
        """
        if self.architecture != "encoder":
            raise ValueError(
                f"{what} needs the encoder-only BioFormer (masked gene modelling, CLS expression decoder); this model "
                "is a decoder. Train one with `bf.tl.pretrain(adata)` (architecture='encoder', the default)."
            )

    def check_prediction_args(self, *, mask_ratio: float | None = None, layer: int = -1) -> None:
        """Raise a ``ValueError`` for a decoder, a ``mask_ratio`` outside (0, 1) or a ``layer`` the model lacks.

        Parameters
        ----------
        mask_ratio
            As in :meth:`get_predicted_bins`; ``None`` is always valid.
        layer
            As in :meth:`get_attention`: a transformer block, negative counting from the end.
        """
        self.require_encoder("Predicting expression and reading attention")
        if mask_ratio is not None and not 0 < mask_ratio < 1:
            raise ValueError(f"`mask_ratio` must be None or lie in (0, 1), not {mask_ratio}.")
        n_layers = len(self.module.encoder.blocks)
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"`layer={layer}` does not exist; the model has {n_layers} layers (0 to {n_layers - 1}).")

    def _batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int,
        *,
        genes: GeneAlignment | None = None,
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ):
        """Binned values of the chosen cells, one minibatch at a time, in order, on the model's device.

        scvi-tools' data loader needs the binned layer registered in memory, with the model's genes;
        a backed AnnData, one without that layer, or one with other genes (``genes``, from
        :meth:`align_genes`) is read in chunks, rearranged into the model's genes and binned like the
        training data instead (:func:`bioformers.data.binned_batches`). Without ``genes``, ``adata``
        must have exactly the model's genes (:meth:`check_genes`).
        """
        self._check_if_trained(warn=False)
        if adata is not None and genes is None:
            self.check_genes(adata)
        binned_layer = self.registry_["setup_args"]["layer"]
        rearrange = genes is not None and not genes.is_identity
        if adata is not None and (adata.isbacked or binned_layer not in adata.layers or rearrange):
            streamed = binned_batches(
                adata,
                binning=self.binning_,
                binned_layer=binned_layer,
                counts_layer=counts_layer,
                indices=indices,
                batch_size=batch_size,
                chunk_size=chunk_size,
                genes=genes,
            )
            batches = map(torch.from_numpy, streamed)
        else:
            loader = self._make_data_loader(adata=validated(self, adata), indices=indices, batch_size=batch_size)
            batches = (tensors[REGISTRY_KEYS.X_KEY] for tensors in loader)
        self.module.eval()
        for bins in batches:
            yield bins.to(self.device)

    @torch.inference_mode()
    def get_predicted_bins(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        mask_ratio: float | None = None,
        batch_size: int | None = None,
        gene_symbols: str | None = None,
        min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
        genes: GeneAlignment | None = None,
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected and most likely bin of every model gene of every cell, both ``(n_cells, n_model_genes)``.

        Deterministic, like :meth:`get_latent_representation`, and read in chunks the same way.
        Columns follow the model's genes (``model.genes_``), whatever the layout of ``adata``; model
        genes ``adata`` lacks are predicted too, from cells in which they read as unexpressed.

        Parameters
        ----------
        adata
            Cells to predict; ``None`` means the training data. Genes matched by name, and streamed
            when backed, without the binned layer or with other genes, as in
            :meth:`get_latent_representation`.
        indices
            Cells to predict; ``None`` means all.
        mask_ratio
            ``None``: decode every gene from the unmasked cell's CLS state (denoised expression;
            the most likely bin is the rounded expectation). A fraction in (0, 1): the genes of each
            cell's sequence are hidden in ``ceil(1 / mask_ratio)`` disjoint groups and each group is
            predicted from the rest by the masked-modelling head (imputation); genes that did not fit
            in the sequence (unexpressed genes of cells with more than ``max_seq_len - 1`` genes)
            keep the CLS decoding.
        batch_size
            Cells per forward pass.
        gene_symbols, min_gene_coverage, genes, counts_layer, chunk_size
            As in :meth:`get_latent_representation`.

        Returns
        -------
        expected : :class:`~numpy.ndarray`
            ``float32`` ``(n_cells, n_model_genes)``, the expected bin.
        best : :class:`~numpy.ndarray`
            ``int64`` ``(n_cells, n_model_genes)``, the most likely bin. Nothing is written into
            ``adata``; :func:`bioformers.tl.predict` writes both into ``layers``.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> expected, best = model.get_predicted_bins(indices=range(5), mask_ratio=0.2)
        >>> expected.shape, best.shape
        ((5, 50), (5, 50))
        """
        self.check_prediction_args(mask_ratio=mask_ratio)
        if adata is not None and genes is None:
            genes = self.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
        batches = self._batches(
            adata, indices, batch_size or 128, genes=genes, counts_layer=counts_layer, chunk_size=chunk_size
        )
        expected_chunks, best_chunks = [], []
        with self._inference_context():
            for bins in batches:
                expected = self.module.predict_expression(bins)
                best = expected.round().long()
                if mask_ratio is not None:
                    for gene_mask in prediction_masks(bins.long(), self.module.max_seq_len - 1, mask_ratio):
                        masked_expected, masked_best = self.module.predict_masked(bins, gene_mask)
                        expected = torch.where(gene_mask, masked_expected, expected)
                        best = torch.where(gene_mask, masked_best, best)
                expected_chunks.append(expected.float().cpu())
                best_chunks.append(best.cpu())
        return torch.cat(expected_chunks).numpy(), torch.cat(best_chunks).numpy()

    @torch.inference_mode()
    def get_masked_predictions(
        self,
        mask: np.ndarray,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict the genes marked in ``mask`` from the rest of each cell, with their values hidden.

        The low-level call behind masked-prediction benchmarks: the caller chooses exactly which
        genes are hidden, so other methods can be scored on the same masks.

        Parameters
        ----------
        mask
            Boolean ``(n_cells, n_genes)`` for the chosen cells (dense or scipy sparse); at most
            ``max_seq_len - 1`` genes per cell.
        adata, indices, batch_size
            As in :meth:`get_predicted_bins`.

        Returns
        -------
        expected : :class:`~numpy.ndarray`
            ``float32`` ``(n_cells, n_genes)``, the expected bin; NaN where ``mask`` is False.
        best : :class:`~numpy.ndarray`
            ``int64`` ``(n_cells, n_genes)``, the most likely bin; -1 where ``mask`` is False.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> mask = bf.metrics.balanced_mask(adata.layers["bioformers_binned"][:20], n_per_cell=4)
        >>> expected, best = model.get_masked_predictions(mask, indices=range(20))
        >>> int((best >= 0).sum()) == int(mask.sum())  # predictions only where hidden
        True
        """
        self.require_encoder("Masked prediction")
        mask = (mask.toarray() if hasattr(mask, "toarray") else np.asarray(mask)).astype(bool)
        n_cells = (adata if adata is not None else self.adata).n_obs if indices is None else len(indices)
        if mask.shape != (n_cells, self.genes_.size):
            raise ValueError(
                f"`mask` has shape {mask.shape}; expected (n_cells, n_genes) = {(n_cells, self.genes_.size)}."
            )
        most = int(mask.sum(axis=1).max(initial=0))
        if most > self.module.max_seq_len - 1:
            raise ValueError(
                f"`mask` hides up to {most} genes of a cell, more than fit in a sequence "
                f"(max_seq_len - 1 = {self.module.max_seq_len - 1}). Hide fewer genes per cell."
            )
        size = batch_size or 128
        expected_chunks, best_chunks = [], []
        with self._inference_context():
            for start, bins in zip(range(0, n_cells, size), self._batches(adata, indices, size), strict=True):
                gene_mask = torch.from_numpy(mask[start : start + len(bins)]).to(bins.device)
                expected, best = self.module.predict_masked(bins, gene_mask)
                expected_chunks.append(expected.float().cpu())
                best_chunks.append(best.cpu())
        return torch.cat(expected_chunks).numpy(), torch.cat(best_chunks).numpy()

    @torch.inference_mode()
    def get_attention(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        layer: int = -1,
        keep_heads: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Attention between genes in ``layer``, averaged over the cells where both genes occur.

        Each cell's attention matrix (query gene x key gene; CLS left out) is added into a gene x
        gene sum and a count of how often each pair shared a sequence; the result is sum / count
        (0 for pairs that never met). Cells are processed in chunks through the explicit attention
        path, so memory does not grow with the number of cells; training and embedding keep the
        fused kernel.

        Parameters
        ----------
        adata, indices
            As in :meth:`get_latent_representation`.
        layer
            Transformer block whose attention is read (negative counts from the end).
        keep_heads
            Keep one matrix per head, ``(n_genes, n_genes, n_heads)``; otherwise heads are averaged.
        batch_size
            Cells per forward pass.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(n_genes, n_genes)`` (query gene x key gene), or ``(n_genes, n_genes, n_heads)``
            with ``keep_heads``. Nothing is written into ``adata``; :func:`bioformers.tl.attention_grn`
            writes it into ``varp``.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> model.get_attention(indices=range(50), keep_heads=True).shape
        (50, 50, 2)
        """
        self.check_prediction_args(layer=layer)
        n = self.genes_.size
        n_maps = self.module.encoder.blocks[0].attn.n_heads if keep_heads else 1
        total = torch.zeros(n_maps, n * n, dtype=torch.float64, device=self.device)
        count = torch.zeros(n * n, dtype=torch.float64, device=self.device)
        with self._inference_context():
            for bins in self._batches(adata, indices, batch_size or 32):
                genes, weights = self.module.attention(bins, layer)
                weights = weights.double() if keep_heads else weights.double().mean(dim=1, keepdim=True)
                pair = (genes[:, :, None] * n + genes[:, None, :]).flatten()
                count.index_add_(0, pair, torch.ones_like(pair, dtype=torch.float64))
                for head in range(n_maps):
                    total[head].index_add_(0, pair, weights[:, head].flatten())
        mean = (total / count.clamp(min=1)).float().cpu().numpy().reshape(n_maps, n, n)
        return np.moveaxis(mean, 0, -1) if keep_heads else mean[0]

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0, the one that writes results (True unless distributed).

        After distributed training with Lightning's default launcher every process runs the rest of the
        script; write files only where this is True.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return bool(trainer.is_global_zero)
        return rank_zero_only.rank == 0

    def loss_history(self) -> dict[str, list[float]]:
        """Train and validation loss per epoch, as plain lists.

        Returns
        -------
        dict
            ``{"train_loss": [...], "validation_loss": [...]}``, one float per finished epoch; the
            validation list is empty without validation cells (``train_size=1``).
        """
        history = self.history_ or {}

        def column(name: str) -> list[float]:
            frame = history.get(name)
            return [] if frame is None else [float(v) for v in frame.iloc[:, 0].dropna()]

        return {"train_loss": column("train_loss"), "validation_loss": column("validation_loss")}

    def save(self, dir_path: str, *, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save weights (safetensors) and settings (JSON) into ``dir_path``.

        Nothing is pickled, so loading a model never executes code from the file. ``model.json``
        records the bioformers version, the model's genes (in order), the binning, the architecture,
        the scvi-tools registry and the loss history; :meth:`load` checks them. Each file is written
        under a temporary name and renamed when complete, so an interrupted save leaves no truncated
        model file.

        In a distributed run only global rank 0 writes; on other processes this does nothing
        (:attr:`is_global_zero`).

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory's model files.
        save_anndata
            Also write the training AnnData as ``adata.h5ad`` (then :meth:`load` needs no AnnData).

        Raises
        ------
        FileExistsError
            ``dir_path`` exists and ``overwrite`` is False.

        Examples
        --------
        >>> import os, tempfile
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> model.save(path, save_anndata=True)
        >>> sorted(os.listdir(path))
        ['adata.h5ad', 'model.json', 'model.safetensors']
        """
        if not self.is_global_zero:
            logger.debug("Not global rank 0 of a distributed run: `save` writes nothing here.")
            return
        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(f"{dir_path!r} already exists. Pass `overwrite=True` or choose another directory.")
        os.makedirs(dir_path, exist_ok=True)
        attributes = {
            "version": package_version(),
            "model_class": type(self).__name__,
            "n_bins": int(self.module.n_bins),
            "init_params": self.init_params_,
            "registry": self.registry_,
            "genes": self.genes_,
            "binning": self.binning_,
            "history": self.loss_history(),
            "perturbation": self.perturbation_,
        }
        write_model(dir_path, self.module.state_dict(), attributes)
        if save_anndata:
            self.adata.write_h5ad(os.path.join(dir_path, SAVED_ANNDATA_FILE))

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, *, accelerator: str = "cpu") -> BioFormer:
        """Load a model written by :meth:`save`, with ``adata`` as its training data.

        Only ``model.safetensors`` and ``model.json`` are read, by parsers that cannot run code; nothing
        is ever unpickled (a directory holding only scvi-tools' pickled ``model.pt`` raises an error
        saying so). Truncated or corrupted files raise a ``ValueError``; weights are checked against
        the architecture in ``model.json`` and every missing, unexpected or differently shaped
        parameter is named. A model saved by another major or minor bioformers version loads with a
        warning naming both versions.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            The model's training data, or any AnnData with exactly the model's genes in the model's
            order (names compared exactly) and the binned layer it was trained on: it is registered
            as the model's AnnData (``model.adata``), which :meth:`get_latent_representation` and
            :meth:`train` read by default. ``None`` reads ``adata.h5ad`` from ``dir_path`` (written
            by ``save(..., save_anndata=True)``). Query data with other genes is not passed here but
            to :func:`bioformers.tl.embed` / :func:`bioformers.tl.predict`, which match genes by name.
        accelerator
            ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        :class:`~bioformers.BioFormer`
            The trained model. ``adata`` is registered with scvi-tools as in :meth:`setup_anndata`
            (``obs['_scvi_batch']``, ``obs['_scvi_labels']``, ``uns['_scvi_uuid']``, ...); nothing else
            is written into it.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> model.save(path)
        >>> loaded = bf.BioFormer.load(path, adata=adata.copy())
        >>> bool(np.array_equal(loaded.get_latent_representation(), model.get_latent_representation()))
        True
        """
        state_dict, attributes, adata, init = read_registered(cls, dir_path, adata)
        if init.get("n_bins") is None and "n_bins" in attributes:
            # the bin vocabulary of the training data, not the largest bin of the AnnData given here
            init["n_bins"] = attributes["n_bins"]
        model = cls(adata, **init)
        check_state_dict(model.module.state_dict(), state_dict, dir_path)
        model.module.load_state_dict(state_dict)
        model.binning_ = attributes["binning"]
        model.perturbation_ = attributes.get("perturbation", {})
        model.history_ = {
            name: pd.DataFrame({name: values}, index=pd.RangeIndex(len(values), name="epoch"))
            for name, values in (
                ("train_loss", attributes["history"]["train_loss"]),
                ("validation_loss", attributes["history"]["validation_loss"]),
            )
        }
        model.is_trained_ = True
        model.to_device("cuda" if accelerator in ("cuda", "gpu") else "cpu")
        model.module.eval()
        return model


def validated(model: BaseModelClass, adata: AnnData | None) -> AnnData:
    """``model._validate_anndata(adata)`` without scvi-tools' INFO line on a query AnnData.

    Our tools hand the model private AnnData objects (sharing the user's matrices) so that scvi-tools'
    bookkeeping never reaches the user's; scvi-tools registers each with "Input AnnData not setup with
    scvi-tools. attempting to transfer AnnData setup", which is expected here and only noise to a user.
    """
    scvi_model_logger = logging.getLogger("scvi.model.base._base_model")
    level = scvi_model_logger.level
    scvi_model_logger.setLevel(max(level, logging.WARNING))
    try:
        return model._validate_anndata(adata)
    finally:
        scvi_model_logger.setLevel(level)


def read_registered(cls, dir_path: str, adata: AnnData | None) -> tuple[dict, dict, AnnData, dict]:
    """What every model's ``load`` does first: read and check the files, register ``adata`` as at training.

    Returns the weights, the attributes, the registered AnnData (``adata``, or the saved one for
    ``None``) and the arguments to construct the model with.
    """
    state_dict, attributes = read_model(dir_path)
    check_model_class(attributes, cls.__name__, dir_path)
    check_version(attributes.get("version"), package_version(), dir_path)
    if adata is None:
        adata = _saved_anndata(dir_path)
    check_training_genes(adata, np.asarray(attributes["genes"]).astype(str), dir_path)
    registry = attributes["registry"]
    cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
    init = attributes["init_params"]
    kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
    return state_dict, attributes, adata, dict(init["non_kwargs"]) | kwargs


def _saved_anndata(dir_path: str) -> AnnData:
    """The training AnnData that ``save(..., save_anndata=True)`` wrote next to the model."""
    path = os.path.join(dir_path, SAVED_ANNDATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No `adata` given and {path} not found (written by `model.save(dir_path, save_anndata=True)`). Pass "
            "`adata=` with the model's training data, binned as for training."
        )
    return anndata.read_h5ad(path)


def check_training_genes(adata: AnnData, genes: np.ndarray, dir_path: str) -> None:
    """Raise unless ``adata`` has exactly ``genes``, in order: the AnnData :meth:`BioFormer.load` registers."""
    names = np.asarray(adata.var_names).astype(str)
    if names.shape == genes.shape and (names == genes).all():
        return
    missing, extra = np.setdiff1d(genes, names), np.setdiff1d(names, genes)
    if missing.size or extra.size:
        detail = (
            f"it lacks {missing.size} of them (e.g. {missing[:5].tolist()}) and has {extra.size} others "
            f"(e.g. {extra[:5].tolist()})"
        )
    elif names.size != genes.size:
        detail = f"it has {names.size} genes, some of them repeated"
    else:
        first = int(np.flatnonzero(names != genes)[0])
        detail = (
            f"it has them in another order (at position {first}: {str(names[first])!r}, model: {str(genes[first])!r})"
        )
    raise ValueError(
        f"`load` registers `adata` as the model's training data, so it needs the {genes.size} genes of the model at "
        f"{str(dir_path)!r} in the model's order (listed under 'genes' in model.json), but {detail}. Pass the "
        "training data (`adata[:, genes].copy()` reorders an AnnData that has them all), or save the model with "
        "`save_anndata=True` and load it without `adata`. To apply the model to data with other genes, load it with "
        "its training data and pass the other data to `bf.tl.embed` / `bf.tl.predict`, which match genes by name."
    )


def _check_bins(X, layer: str) -> None:
    values = X.data if sparse.issparse(X) else np.asarray(X)
    check_dtype(values, where=f"adata.layers[{layer!r}]")
    is_bins = np.isfinite(values).all() and values.min(initial=0) >= 0 and np.array_equal(values, np.round(values))
    if not is_bins:
        raise ValueError(
            f"Layer {layer!r} does not hold bin indices (non-negative integers). Bin raw counts with `bf.pp.bin`."
        )
    n_empty = int((np.asarray((X != 0).sum(axis=1)).ravel() == 0).sum())
    if n_empty:
        raise ValueError(
            f"Layer {layer!r} has {n_empty} cell(s) with no expressed gene, which carry no information. Remove them "
            f"first, e.g. `adata = adata[adata.layers[{layer!r}].getnnz(axis=1) > 0].copy()` (or "
            "`sc.pp.filter_cells(adata, min_counts=1)` before binning)."
        )
