"""``BioFormer``: the encoder network as a scvi-tools model, composed from the mixins of ``model/base``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass

from .._docs import DOC_ADATA_REGISTERED, DOC_NETWORK, DOC_OBJECTIVE, doc_params
from .._keys import COUNTS_KEY
from ..data._views import value_binning_args
from ..module import BioFormerModule, BioFormerPerturbationModule
from ..train import WarmupCosineTrainingPlan
from .base import (
    MaskedPredictionMixin,
    PerturbationMixin,
    QueryMixin,
    SaveLoadMixin,
    TokenSetupMixin,
    TokenTrainingMixin,
)


def mean_shares(counts) -> np.ndarray:
    """Each gene's mean share of a cell's counts, ``(n_genes,)``, from a cells x genes count matrix."""
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    return np.asarray((sparse.diags(1 / totals) @ counts).mean(axis=0)).ravel()


if TYPE_CHECKING:
    from anndata import AnnData

#: External-token categories of a perturbation model: 0 = not perturbed, 1 = perturbed.
N_PERTURBATION_CATEGORIES = 2


@doc_params(adata=DOC_ADATA_REGISTERED, network=DOC_NETWORK, objective=DOC_OBJECTIVE)
class BioFormer(
    MaskedPredictionMixin,
    PerturbationMixin,
    QueryMixin,
    TokenSetupMixin,
    TokenTrainingMixin,
    SaveLoadMixin,
    BaseModelClass,
):
    """A BioFormer transformer trained on binned expression of one AnnData.

    Cells are sequences ``[CLS, g1, ..., gM]`` of gene tokens carrying binned expression values
    (:func:`bioformers.pp.bin`); the model learns by masked gene modelling and by decoding each
    cell's expression from its CLS state, whose final hidden state is the cell embedding.

    :func:`bioformers.tl.pretrain` bins, sets up, builds, trains and embeds in one call; this class
    is the model it returns, for steps of your own (saving, loading, custom training). The
    decoder-only network, which generates cells, is :class:`~bioformers.BioFormerDecoder`. Set up
    with ``perturbation_key``, the network is a :class:`~bioformers.module.BioFormerPerturbationModule`
    (:func:`bioformers.tl.train_perturbation`).

    Parameters
    ----------
    {adata}
    {network}
    {objective}
    n_bins
        Number of bin values; read from the data when ``None``.
    batch_adversarial_weight
        With a registered ``batch_key`` only: weight of an adversarial batch classifier on the
        cell embedding (0: off). On PBMC from three 10x chemistries the batch token alone barely mixed
        them (iLISI 0.05, against 0.04 without a batch key; one quick run), the token with the classifier
        at weight 1 reached iLISI 0.41 and the cell types clustered better too (NMI 0.77 vs 0.57)
        (``benchmarks/results/pbmc_integration.md``).
        See :class:`~bioformers.module.BioFormerModule`.
    count_weight
        With raw counts registered (``setup_anndata(..., counts=True)``, as :func:`bioformers.tl.pretrain`
        does): weight of the count objective, a negative-binomial likelihood of the cell's counts
        decoded from CLS and the batch token, with the library size as a covariate (scVI's decoder).
        After training the decoder is fitted to the final embeddings (:meth:`fit_count_decoder`); it
        gives :meth:`get_normalized_expression` and :func:`bioformers.tl.predict`. 0: off.
    view_weight
        With raw counts registered and value binning: weight of the two-view objective, which makes the
        CLS state of a cell and of its counts binomially thinned to a random depth (30-100%) agree
        (Barlow Twins' redundancy reduction). Off by default: one more encoder pass per step, and on
        PBMC 3k it did not help (``benchmarks/README.md``).

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
    _training_plan_cls = WarmupCosineTrainingPlan
    _also_loads = ("BioFormerDecoder",)
    #: Bidirectional attention over the cell's genes, masked gene modelling, CLS embedding.
    architecture = "encoder"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 64,
        n_layers: int = 4,
        n_heads: int = 2,
        dropout: float = 0.1,
        max_seq_len: int = 256,
        value_encoder: Literal["linear", "embedding"] = "embedding",
        mask_ratio: float = 0.25,
        nonzero_ratio: float = 0.5,
        expression_weight: float = 10.0,
        n_bins: int | None = None,
        batch_adversarial_weight: float = 3.0,
        count_weight: float = 10.0,
        view_weight: float = 0.0,
    ):
        super().__init__(adata, registry)
        n_bins = self._n_bins(n_bins)
        # perturbation targets that are not measured genes still get a gene token
        measured = {str(g) for g in self._state_registry(REGISTRY_KEYS.X_KEY)["column_names"]}
        self._init_tokens(adata, [t for t in self.registered_targets() if t not in measured])
        #: The perturbation split and training record (set by :func:`bioformers.tl.train_perturbation`).
        self.perturbation_: dict = {}
        sizes = {
            "n_bins": n_bins,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "dropout": dropout,
            "max_seq_len": max_seq_len,
            "value_encoder": value_encoder,
            "mask_ratio": mask_ratio,
            "nonzero_ratio": nonzero_ratio,
            "expression_weight": expression_weight,
            "n_batch": self._n_categories("batch"),
            "batch_adversarial_weight": batch_adversarial_weight,
            "n_extra_genes": self.vocabulary_.size - self.genes_.size,
            # the count objective scores registered counts only
            "count_weight": count_weight if self.has_counts else 0.0,
        }
        if self.has_counts and self.binning_.get("method", "value") == "value" and view_weight > 0:
            # thinned views are binned like the training data
            sizes["view_weight"] = view_weight
            sizes["view_binning"] = value_binning_args(self.binning_)
        if self.control_ is None:
            self.module = self._module_cls(self.genes_.size, **sizes)
        else:
            self.module = BioFormerPerturbationModule(self.genes_.size, n_external=N_PERTURBATION_CATEGORIES, **sizes)
        if self.module.count_head is not None and adata is not None:  # else loaded: weights from the file
            self.module.start_count_decoder(mean_shares(self.adata_manager.get_from_registry(COUNTS_KEY)))
        self._model_summary_string = (
            f"BioFormer: {self.genes_.size} genes, {n_bins} bins, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"n_heads={n_heads}, max_seq_len={max_seq_len}, value_encoder={value_encoder!r}"
        )
        self.init_params_ = self._get_init_params(locals())

    def _saved_attributes(self) -> dict:
        return super()._saved_attributes() | {"perturbation": self.perturbation_}

    def _restore(self, attributes: dict) -> None:
        super()._restore(attributes)
        self.perturbation_ = attributes.get("perturbation", {})
