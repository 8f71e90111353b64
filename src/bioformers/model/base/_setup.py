"""Registering binned gene tokens (and batch, label, perturbation columns) with scvi-tools, for every token model."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField

from ..._docs import DOC_CONDITION_KIND, DOC_RETURNS_SETUP, DOC_SCVI_FIELDS, DOC_SETUP_KWARGS, doc_params
from ..._keys import COUNTS_KEY, PERTURBATION_KEY, Keys
from ..._private import binned_from
from ..._validation import (
    check_anndata,
    check_control,
    check_counts,
    check_dtype,
    check_obs_key,
    check_setup_kwargs,
    did_you_mean,
    get_matrix,
    matrix_name,
    shown,
)


class TokenSetupMixin:
    """``setup_anndata`` of the models that read binned gene tokens, and what their registry tells.

    ``_init_tokens`` records, from the training AnnData, what every such model keeps: its genes,
    its gene-token vocabulary and how the data was binned (so queries are binned alike).
    """

    # genes, binning and registry are all in model.json: `load` builds the model from the registry alone
    _loads_without_data = True

    def _init_tokens(self, adata: AnnData | None, extra_genes: list[str] | None = None) -> None:
        layer = self.registry_["setup_args"]["layer"]
        #: How the training data was binned (its ``uns['bioformers_binned']['params']``); queries are binned alike.
        self.binning_ = {} if adata is None else dict(adata.uns.get(layer, {}).get("params", {}))
        #: The model's genes, in order (the training data's ``var_names``, as scvi-tools' registry keeps them).
        self.genes_ = np.asarray(self._state_registry(REGISTRY_KEYS.X_KEY)["column_names"]).astype(str)
        #: Every gene token (the model's genes, then perturbation targets that are not measured genes).
        self.vocabulary_ = np.concatenate([self.genes_, np.asarray(extra_genes or [], dtype=str)])
        #: The text columns of the training data's ``var`` (e.g. Ensembl IDs next to symbols), one row per gene.
        self.gene_table_ = pd.DataFrame(index=pd.Index(self.genes_))
        if adata is not None:
            self.gene_table_ = adata.var[text_columns(adata.var)].astype(str).set_axis(self.gene_table_.index)

    def _state_registry(self, key: str) -> dict:
        """scvi-tools' state registry of the field ``key``, read from the registry (no AnnData needed)."""
        return self.registry_["field_registries"][key]["state_registry"]

    def _n_bins(self, n_bins: int | None) -> int:
        """``n_bins``, or the bin vocabulary of the registered data (largest bin + 1)."""
        if n_bins is not None:
            return n_bins
        if self.adata is None:
            raise ValueError("A model built from a registry alone (no AnnData) needs `n_bins`.")
        return int(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY).max()) + 1

    # model.json: the bin vocabulary, the binning (so that a loaded model bins queries as in training) and
    # the genes' annotations, so that a model directory is complete without its training data
    def _saved_attributes(self) -> dict:
        return super()._saved_attributes() | {
            "n_bins": int(self.module.n_bins),
            "binning": self.binning_,
            "var": {str(c): self.gene_table_[c].tolist() for c in self.gene_table_.columns},
        }

    @classmethod
    def _saved_init(cls, init: dict, attributes: dict) -> dict:
        if init.get("n_bins") is None and "n_bins" in attributes:
            # the bin vocabulary of the training data, not the largest bin of the AnnData given to `load`
            init = init | {"n_bins": attributes["n_bins"]}
        return super()._saved_init(init, attributes)

    def _restore(self, attributes: dict) -> None:
        super()._restore(attributes)
        self.binning_ = attributes["binning"]
        if "var" in attributes:  # models saved before the genes' annotations were kept have none
            self.gene_table_ = pd.DataFrame(attributes["var"], index=pd.Index(self.genes_))

    @property
    def has_counts(self) -> bool:
        """Whether the raw counts were registered (``setup_anndata(..., counts=True)``)."""
        return bool(self.registry_["setup_args"].get("counts", False))

    def _n_categories(self, kind: Literal["labels", "batch"]) -> int:
        """Categories of the registered ``labels_key`` / ``batch_key`` column (0 when not registered)."""
        if self.registry_["setup_args"].get(f"{kind}_key") is None:
            return 0
        return self.summary_stats.n_labels if kind == "labels" else self.summary_stats.n_batch

    @classmethod
    @doc_params(kwargs=DOC_SETUP_KWARGS, returns_setup=DOC_RETURNS_SETUP, scvi_fields=DOC_SCVI_FIELDS)
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        perturbation_key: str | None = None,
        control: str = "control",
        counts: bool = False,
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
        counts
            Also register the raw counts the bins were made from (the layer named in the binning
            record, ``adata.X`` when it names none), which the count objective of
            :class:`~bioformers.BioFormer` (``count_weight``) scores. They must be whole numbers.
        {kwargs}

        Returns
        -------
        {returns_setup}

            ``adata.obs['_scvi_batch']``, ``adata.obs['_scvi_labels']`` : ``int8``
                Codes of ``batch_key`` and ``labels_key`` (all 0 when not given).
            {scvi_fields}

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=100, n_vars=30)
        >>> bf.pp.bin(adata)
        >>> bf.BioFormer.setup_anndata(adata, batch_key="batch")
        >>> adata.obs["_scvi_batch"].value_counts().sort_index().tolist()
        [50, 50]
        """
        check_setup_kwargs(
            kwargs,
            setup=cls.setup_anndata,
            where=f"`bf.{cls.__name__}.setup_anndata`",
            hints={
                key: f"{cls.__name__} takes one `batch_key` and one `labels_key`; a generative model conditioned on "
                "several columns is `bf.CellDiffusion`."
                for key in ("categorical_covariate_keys", "continuous_covariate_keys")
                if key in kwargs
            },
        )
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
        source = _counts_source(adata, layer) if counts else None
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        if perturbation_key is not None:
            fields.append(CategoricalObsField(PERTURBATION_KEY, perturbation_key))
        if counts:
            fields.append(LayerField(COUNTS_KEY, source, is_count_data=True))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @doc_params(kind=DOC_CONDITION_KIND)
    def condition_categories(self, kind: Literal["labels", "batch"]) -> list[str]:
        """The categories of the registered ``labels_key`` or ``batch_key`` column.

        Parameters
        ----------
        {kind}

        Returns
        -------
        list of str
            The categories, in the order of their codes; empty when the column was not registered.
        """
        key = {"labels": "labels_key", "batch": "batch_key"}[kind]
        if self.registry_["setup_args"].get(key) is None:
            return []
        registry_key = REGISTRY_KEYS.LABELS_KEY if kind == "labels" else REGISTRY_KEYS.BATCH_KEY
        return [str(c) for c in self._state_registry(registry_key)["categorical_mapping"]]


def text_columns(var: pd.DataFrame) -> list[str]:
    """The columns of a genes' table that a model keeps (``gene_table_``): text, e.g. Ensembl IDs, not scvi-tools'."""
    return [
        c
        for c in var.columns
        if not str(c).startswith("_scvi")
        and (isinstance(var[c].dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(var[c]))
    ]


def _counts_source(adata: AnnData, layer: str) -> str | None:
    """The layer with the raw counts that ``layers[layer]`` was binned from (``None``: ``adata.X``), checked."""
    source = binned_from(adata, layer)
    if source is not None and source not in adata.layers:
        raise KeyError(
            f"`counts=True` registers the raw counts that {layer!r} was binned from, layer {source!r}, which is not in "
            f"`adata.layers` ({shown(adata.layers.keys())}). Add it, or pass `counts=False`."
        )
    # e.g. binned from X, and X was log-normalised afterwards: the counts are gone from there, and the
    # binning record, not `layer=`, says where the count objective reads them
    check_counts(
        get_matrix(adata, source),
        where=matrix_name(source),
        require_integer=True,
        fix=f"`layers[{layer!r}]` was binned from {matrix_name(source)}, so the count objective reads the raw counts "
        "there. Bin from the raw counts instead, e.g. `bf.pp.bin(adata, layer='counts')` if you kept them in "
        "`layers['counts']`, or train without the count objective (`count_weight=0`).",
    )
    return source


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
