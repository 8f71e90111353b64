"""``BioFormer``: the user-facing scvi-tools model."""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.train import TrainRunner

from .._keys import Keys
from .._validation import check_obs_key, check_unique_var_names, get_matrix
from ..data import PerturbationPairs, binned_batches, perturbation_targets, prediction_masks
from ..module import BioFormerModule
from ..train import BioFormerTrainingPlan, PerturbationTrainingPlan, default_precision
from ._serialization import read_model, write_model

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: Registry key of the perturbation column (``setup_anndata(perturbation_key=...)``).
PERTURBATION_KEY = "perturbation"
#: External-token categories of a perturbation model: 0 = not perturbed, 1 = perturbed.
N_PERTURBATION_CATEGORIES = 2


def default_max_epochs(n_obs: int) -> int:
    """Enough optimiser steps for a good embedding in minutes: more epochs for smaller data."""
    return int(np.clip(round(30_000 / max(n_obs, 1)), 5, 30))


class BioFormer(UnsupervisedTrainingMixin, BaseModelClass):
    """A BioFormer transformer trained on binned expression of one AnnData.

    Cells are sequences ``[CLS, g1, ..., gM]`` of gene tokens carrying binned expression values
    (:func:`bioformers.pp.bin`); the model learns by masked gene modelling and by decoding each
    cell's expression from its CLS state, whose final hidden state is the cell embedding.

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

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> bf.pp.bin(adata)
    >>> bf.BioFormer.setup_anndata(adata)
    >>> model = bf.BioFormer(adata, n_hidden=16, n_layers=1, n_heads=2)
    >>> model.train(max_epochs=1, batch_size=32)
    >>> adata.obsm["X_bioformers"] = model.get_latent_representation()
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
    ):
        super().__init__(adata)
        binned = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if n_bins is None:
            n_bins = int(binned.max()) + 1
        layer = self.registry_["setup_args"]["layer"]
        self.binning_ = dict(adata.uns.get(layer, {}).get("params", {}))
        self.genes_ = np.asarray(adata.var_names).astype(str)
        # perturbation targets that are not measured genes still get a gene token
        extra = [t for t in self.registered_targets() if t not in set(self.genes_)]
        self.vocabulary_ = np.concatenate([self.genes_, np.asarray(extra, dtype=str)])
        #: the perturbation split and training record (set by :func:`bioformers.tl.train_perturbation`)
        self.perturbation_: dict = {}
        self.module = self._module_cls(
            n_genes=adata.n_vars,
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
            f"BioFormer: {adata.n_vars} genes, {n_bins} bins, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"n_heads={n_heads}, max_seq_len={max_seq_len}, value_encoder={value_encoder!r}"
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

        Parameters
        ----------
        adata
            AnnData with binned values from :func:`bioformers.pp.bin`.
        layer
            Layer holding the binned values; ``None`` means ``"bioformers_binned"``.
        batch_key
            Column of ``adata.obs`` with batches.
        labels_key
            Column of ``adata.obs`` with cell labels.
        perturbation_key
            Column of ``adata.obs`` naming each cell's perturbation: ``control`` or the perturbed
            gene(s), combinations joined by ``+`` (``"STAT1+JAK2"``). A model set up with it has
            external tokens that mark perturbed genes, and a gene token for every target that is not
            a measured gene; see :func:`bioformers.tl.train_perturbation`.
        control
            The label of control cells in ``perturbation_key``.
        """
        layer = Keys().binned if layer is None else layer
        if layer not in adata.layers:
            raise KeyError(
                f"Layer {layer!r} with binned values not found. Run `bf.pp.bin(adata)` first, or pass `layer=` "
                "naming the layer `bf.pp.bin` wrote."
            )
        _check_bins(get_matrix(adata, layer), layer)
        check_unique_var_names(adata)
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
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
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
        plan_kwargs
            More arguments for :class:`~bioformers.train.BioFormerTrainingPlan`.
        **trainer_kwargs
            Passed to scvi-tools' ``train`` and Lightning's ``Trainer`` (e.g. ``strategy``,
            ``num_nodes``, ``train_size``, ``early_stopping``).

        Notes
        -----
        ``strategy="ddp"`` with ``devices=N`` trains on N processes, each on its share of the cells
        (scvi-tools' distributed sampler), with gradients and logged losses averaged across them.
        Lightning starts the extra processes by running the script again, so every process continues
        past ``train``; all hold the same trained weights, only global rank 0 holds the loss history.
        Guard writes with :attr:`is_global_zero` (:meth:`save` already does). See ``docs/scaling.md``.
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
        self.module.encoder.activation_checkpointing = activation_checkpointing
        if compile:
            self.module.encoder.compile()
        return super().train(
            max_epochs=max_epochs or default_max_epochs(n_obs),
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            plan_kwargs=plan_kwargs,
            precision=precision or default_precision(accelerator),
            gradient_clip_val=gradient_clip_val,
            **validation_every_epoch | trainer_kwargs,
        )

    @property
    def control_(self) -> str | None:
        """The control label of the registered perturbation column; ``None`` without one."""
        args = self.registry_["setup_args"]
        return args.get("control") if args.get("perturbation_key") is not None else None

    def registered_targets(self) -> list[str]:
        """Every gene named by a registered perturbation label, in order of first appearance."""
        if self.control_ is None:
            return []
        labels = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        return list(dict.fromkeys(t for label in labels for t in perturbation_targets(label, self.control_)))

    def target_indices(self, labels: Sequence[str]) -> np.ndarray:
        """Vocabulary indices of the targets of each perturbation label, ``(labels, slots)``, -1 where empty.

        Raises a ``ValueError`` naming the genes the model has no token for.
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
        **trainer_kwargs,
    ):
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
        **trainer_kwargs
            Passed to Lightning's ``Trainer``.
        """
        codes = np.asarray(self.adata_manager.get_from_registry(PERTURBATION_KEY)).ravel().astype(int)
        labels = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        control_code = int(np.flatnonzero(np.asarray(labels) == self.control_)[0])
        indices = np.asarray(indices)
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
            precision=precision or default_precision(accelerator),
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        with warnings.catch_warnings():
            # the plan inherits scvi-tools' validation step; pairs have no validation set to run it on
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            return runner()

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

    def check_genes(self, adata: AnnData) -> None:
        """Raise unless ``adata`` has exactly the model's genes, in the model's order."""
        genes = np.asarray(adata.var_names).astype(str)
        if genes.shape == self.genes_.shape and (genes == self.genes_).all():
            return
        missing = np.setdiff1d(self.genes_, genes)
        if missing.size:
            raise ValueError(
                f"The AnnData lacks {missing.size} of the model's {self.genes_.size} genes "
                f"(e.g. {missing[:5].tolist()}). "
                "Give it the model's genes, e.g. by adding them as zero columns."
            )
        raise ValueError(
            f"The AnnData's genes differ from the model's ({adata.n_vars} vs {self.genes_.size}, or in another "
            "order). Subset and reorder it with `adata[:, model.genes_].copy()`."
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
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> np.ndarray:
        """CLS embedding of each cell, ``(n_cells, n_hidden)``.

        Deterministic: each cell's sequence is fixed by its own values, masking is off, and the
        same input gives bit-identical output, in memory or streamed, whatever the batch or chunk size.

        Parameters
        ----------
        adata
            AnnData with the model's genes; ``None`` means the training data. An in-memory AnnData
            with the model's binned layer goes through scvi-tools' data loader. A backed one
            (``anndata.read_h5ad(path, backed="r")``), or one without the binned layer, is read
            ``chunk_size`` cells at a time and binned like the training data, so memory does not
            grow with the number of cells beyond the result.
        indices
            Cells to embed; ``None`` means all.
        batch_size
            Cells per forward pass.
        counts_layer
            Layer with raw counts to bin when ``adata`` lacks the binned layer; ``None`` uses ``adata.X``.
        chunk_size
            Cells read and binned at a time when streaming (whole batches, at least one); ``None``: 4,096.
        """
        batches = self._batches(adata, indices, batch_size or 256, counts_layer=counts_layer, chunk_size=chunk_size)
        chunks = []
        with self._inference_context():
            for bins in batches:
                # clone: the CLS row is a view that would keep the batch's hidden states (all tokens) alive
                chunks.append(self.module.embed(bins).float().cpu().clone())
        return torch.cat(chunks).numpy()

    def check_prediction_args(self, *, mask_ratio: float | None = None, layer: int = -1) -> None:
        """Raise a ``ValueError`` for a ``mask_ratio`` outside (0, 1) or a ``layer`` the model lacks."""
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
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ):
        """Binned values of the chosen cells, one minibatch at a time, in order, on the model's device.

        scvi-tools' data loader needs the binned layer registered in memory; a backed AnnData, or one
        without that layer, is read in chunks and binned like the training data instead
        (:func:`bioformers.data.binned_batches`).
        """
        self._check_if_trained(warn=False)
        if adata is not None:
            self.check_genes(adata)
        binned_layer = self.registry_["setup_args"]["layer"]
        if adata is not None and (adata.isbacked or binned_layer not in adata.layers):
            streamed = binned_batches(
                adata,
                binning=self.binning_,
                binned_layer=binned_layer,
                counts_layer=counts_layer,
                indices=indices,
                batch_size=batch_size,
                chunk_size=chunk_size,
            )
            batches = map(torch.from_numpy, streamed)
        else:
            loader = self._make_data_loader(adata=self._validate_anndata(adata), indices=indices, batch_size=batch_size)
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
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected and most likely bin of every gene of every cell, both ``(n_cells, n_genes)``.

        Deterministic, like :meth:`get_latent_representation`, and read in chunks the same way.

        Parameters
        ----------
        adata
            AnnData with the model's genes; ``None`` means the training data. Backed, or without the
            binned layer: streamed as in :meth:`get_latent_representation`.
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
        counts_layer, chunk_size
            As in :meth:`get_latent_representation`.
        """
        self.check_prediction_args(mask_ratio=mask_ratio)
        batches = self._batches(adata, indices, batch_size or 128, counts_layer=counts_layer, chunk_size=chunk_size)
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
        Expected and most likely bin, ``(n_cells, n_genes)``; NaN and -1 where ``mask`` is False.
        """
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
        ``float32`` array ``(n_genes, n_genes)`` (or with a trailing heads axis).
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
        """Train and validation loss per epoch, as plain lists."""
        history = self.history_ or {}

        def column(name: str) -> list[float]:
            frame = history.get(name)
            return [] if frame is None else [float(v) for v in frame.iloc[:, 0].dropna()]

        return {"train_loss": column("train_loss"), "validation_loss": column("validation_loss")}

    def save(self, dir_path: str, *, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save weights (safetensors) and settings (JSON) into ``dir_path``.

        Nothing is pickled, so loading a model never executes code from the file.

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory's model files.
        save_anndata
            Also write the training AnnData as ``adata.h5ad``.

        In a distributed run only global rank 0 writes; on other processes this does nothing
        (:attr:`is_global_zero`).
        """
        if not self.is_global_zero:
            logger.debug("Not global rank 0 of a distributed run: `save` writes nothing here.")
            return
        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(f"{dir_path!r} already exists. Pass `overwrite=True` or choose another directory.")
        os.makedirs(dir_path, exist_ok=True)
        attributes = {
            "init_params": self.init_params_,
            "registry": self.registry_,
            "genes": self.genes_,
            "binning": self.binning_,
            "history": self.loss_history(),
            "perturbation": self.perturbation_,
        }
        write_model(dir_path, self.module.state_dict(), attributes)
        if save_anndata:
            self.adata.write_h5ad(os.path.join(dir_path, "adata.h5ad"))

    @classmethod
    def load(cls, dir_path: str, adata: AnnData, *, accelerator: str = "cpu") -> BioFormer:
        """Load a model written by :meth:`save` for ``adata``.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData with the model's genes (same order) and binned values.
        accelerator
            ``"cpu"`` or ``"cuda"``.
        """
        state_dict, attributes = read_model(dir_path)
        genes = np.asarray(attributes["genes"]).astype(str)
        if adata.n_vars != genes.size or not (np.asarray(adata.var_names).astype(str) == genes).all():
            raise ValueError(
                f"The AnnData's genes ({adata.n_vars}) do not match the {genes.size} genes the model at {dir_path!r} "
                "was trained on. Subset and reorder it with `adata[:, genes].copy()` using the model's gene list."
            )
        registry = attributes["registry"]
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        init = attributes["init_params"]
        kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        model = cls(adata, **init["non_kwargs"], **kwargs)
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


def check_control(labels: pd.Series, control: str, key: str) -> None:
    """Raise unless ``control`` is one of the ``labels`` (an ``obs`` column)."""
    present = pd.unique(labels.astype(str))
    if control not in present:
        shown = sorted(present)[:10]
        raise ValueError(
            f"The control label {control!r} is not in `adata.obs[{key!r}]` (labels include {shown}). "
            f"Pass `control=` with the label of control cells."
        )


def _check_bins(X, layer: str) -> None:
    values = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
    if values.size and (values.min() < 0 or not np.array_equal(values, np.round(values))):
        raise ValueError(
            f"Layer {layer!r} does not hold bin indices (non-negative integers). Bin raw counts with `bf.pp.bin`."
        )
