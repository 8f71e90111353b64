"""Query preparation, once for every model over gene tokens: genes matched by name, cells binned as in training.

What scvi-tools' ``ArchesMixin.prepare_query_anndata`` is to its models: every tool that applies a
trained model to an AnnData goes through :meth:`bioformers.BioFormer.prepare_query`, which checks the query,
bins it like the training data where needed and registers it privately, so that neither scvi-tools'
bookkeeping nor a half-written result ever reaches the user's AnnData.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from ..._docs import DOC_BATCH_SIZE, doc_params
from ..._private import forget, private_anndata, registered, registered_columns
from ..._validation import check_backed_writable, check_counts, get_matrix, matrix_name
from ...data import binned_batches
from ...pp._genes import DEFAULT_MIN_GENE_COVERAGE, GeneAlignment, align_genes, match_genes
from ...pp._tokens import BINNING_ARGS, bin_as_recorded
from ...train import default_precision

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import scvi
    from anndata import AnnData


@dataclass
class Query:
    """A query AnnData as the model reads it, handed out by :meth:`bioformers.BioFormer.prepare_query`.

    Attributes
    ----------
    model
        The model the query is prepared for.
    adata
        What the model reads: a private AnnData sharing the query's matrices (with the binned layer
        when it was binned here), or the query itself when it is backed (streamed, never registered).
    genes
        The query's alignment to the model's genes; ``None`` when it has exactly the model's genes.
    counts_layer
        The query's layer with counts (``None``: ``X``), binned chunk by chunk where needed.
    """

    model: scvi.model.base.BaseModelClass
    adata: AnnData
    genes: GeneAlignment | None
    counts_layer: str | None

    def batches(
        self, indices: Sequence[int] | None = None, *, batch_size: int = 128, chunk_size: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Token batches of the chosen cells, in order, on the model's device.

        See :meth:`bioformers.BioFormer.binned_batches`.

        Parameters
        ----------
        indices
            Cells to read; ``None``: all.
        batch_size
            Cells per batch.
        chunk_size
            Cells read and binned at a time when streaming.

        Yields
        ------
        :class:`~torch.Tensor`
            ``(cells, n_genes)`` bins of the model's genes.
        """
        return self.model.binned_batches(
            self.adata, indices, batch_size, genes=self.genes, counts_layer=self.counts_layer, chunk_size=chunk_size
        )

    def write_binning(self, target: AnnData) -> None:
        """Write the binned layer and its record into ``target``, if this query was binned here."""
        layer = self.model.registry_["setup_args"]["layer"]
        if self.adata is not target and layer not in target.layers and layer in self.adata.layers:
            target.layers[layer] = self.adata.layers[layer]
            target.uns[layer] = self.adata.uns[layer]


class QueryMixin:
    """Apply a model over gene tokens to any AnnData: gene matching, binning, token batches, embeddings."""

    @contextmanager
    def prepare_query(
        self, adata: AnnData, *, layer: str | None = None, copy: bool = False, genes: GeneAlignment | None = None
    ) -> Iterator[Query]:
        """Check ``adata`` against the model, bin it like the training data where needed, and hand it out.

        Everything is checked on entry, before anything is computed; the result must then be written
        by the caller after the ``with`` block, so a failure leaves ``adata`` as it was. Value binning
        scales cells to the training data's ``target_sum``. A backed AnnData is never binned whole:
        the model reads and bins it in chunks. A query with other genes than exactly the model's
        (``genes``, from :meth:`align_genes`) is not binned into a layer either: its bins depend on
        the model's genes, so its counts are rearranged and binned chunk by chunk; here the counts of
        the model's genes are checked.

        Cell embeddings and predictions never read a cell's batch or label, but scvi-tools'
        registration wants the columns the model was set up with, with known values; a query
        without them, or from an unseen batch, gets a placeholder (the first known value) in the
        private AnnData. On exit the model forgets the private AnnData.

        Parameters
        ----------
        adata
            The query, in memory or backed.
        layer
            Layer with counts (``None``: ``X``), binned when the model's binned layer is missing.
        copy
            Whether the caller writes into a copy (a view of a backed AnnData is allowed then).
        genes
            The query's alignment to the model's genes (:meth:`align_genes`); ``None`` requires
            exactly the model's genes, in order (:meth:`check_genes`).

        Yields
        ------
        :class:`~bioformers.model.base.Query`
            What the model reads; :meth:`~bioformers.model.base.Query.write_binning` writes the binned layer it made.
        """
        binning_step = self._query_binning(adata, layer, copy=copy, genes=genes)
        work = self._query_anndata(adata, layer)
        try:
            if binning_step is not None:
                binning_step(work)
            yield Query(model=self, adata=work, genes=genes, counts_layer=layer)
        finally:
            forget(self, work)

    def _query_binning(self, adata: AnnData, layer: str | None, *, copy: bool, genes: GeneAlignment | None):
        """Check ``adata``; return the step that bins it into the model's layer, or ``None`` when none is needed."""
        check_backed_writable(adata, copy=copy)
        if genes is None:
            self.check_genes(adata)
        # the model reads the layer it was set up with, whatever the caller's key_added
        binned_layer = self.registry_["setup_args"]["layer"]
        if binned_layer in adata.layers or adata.isbacked:
            return None
        binning = {k: self.binning_[k] for k in BINNING_ARGS if k in self.binning_}
        normalize = binning.get("normalize", True) and binning.get("method", "value") == "value"
        counts, where = get_matrix(adata, layer), matrix_name(layer)
        if genes is not None and not genes.is_identity:
            aligned = genes.take(counts)
            genes.check_cells(counts, aligned, where=where)
            check_counts(aligned, where=f"{where} (the model's genes)", require_integer=bool(normalize))
            return None
        if not binned_layer.endswith("_binned"):
            raise KeyError(
                f"The model reads binned values from `layers[{binned_layer!r}]`, which this AnnData lacks. "
                f"Bin it the way the training data was binned ({binning}) into that layer first."
            )
        check_counts(counts, where=where, require_integer=bool(normalize))
        key_added = binned_layer.removesuffix("_binned")
        return lambda work: bin_as_recorded(work, binning, layer=layer, key_added=key_added)

    def _query_anndata(self, adata: AnnData, layer: str | None) -> AnnData:
        """The private AnnData the model registers and bins (``adata`` itself when backed)."""
        if adata.isbacked:
            return adata
        binned_layer = self.registry_["setup_args"]["layer"]
        work = private_anndata(adata, obs=registered_columns(self), layers=[binned_layer, layer], uns=[binned_layer])
        for kind in ("batch", "labels"):
            key = self.registry_["setup_args"].get(f"{kind}_key")
            known = self.condition_categories(kind)
            if key is not None and (key not in work.obs or not work.obs[key].astype(str).isin(known).all()):
                work.obs[key] = pd.Categorical([known[0]] * work.n_obs, categories=known)
        return work

    def align_genes(
        self,
        adata: AnnData,
        *,
        gene_symbols: str | None = None,
        min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    ) -> GeneAlignment:
        """Match the genes of a query to the model's by name, report the coverage, refuse too little.

        What :func:`bioformers.tl.embed`, :func:`bioformers.tl.predict`, :meth:`get_latent_representation`
        and :meth:`~bioformers.BioFormer.get_predicted_bins` do with a query's genes. Never by position:
        genes are matched by name (``adata.var_names`` or the ``gene_symbols`` column of ``adata.var``),
        Ensembl IDs without their version suffix (``ENSG00000141510.16`` matches ``ENSG00000141510``),
        other names exactly. Model genes the query lacks are read as unexpressed (bin 0); query genes the model does not
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

    def inference_context(self):
        """The autocast context for inference: bf16 where training would use it on this device, else none.

        Returns
        -------
        context manager
            ``torch.autocast``, or ``contextlib.nullcontext`` where inference runs in fp32.
        """
        kind = torch.device(self.device).type
        if default_precision("cuda" if kind == "cuda" else "cpu") == "bf16-mixed":
            return torch.autocast(kind, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
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
        {batch_size}
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
        batches = self.binned_batches(
            adata, indices, batch_size or 256, genes=genes, counts_layer=counts_layer, chunk_size=chunk_size
        )
        chunks = []
        with self.inference_context():
            for bins in batches:
                # clone: the CLS row is a view that would keep the batch's hidden states (all tokens) alive
                chunks.append(self.module.embed(bins).float().cpu().clone())
        return torch.cat(chunks).numpy()

    def binned_batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int,
        *,
        genes: GeneAlignment | None = None,
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Binned values of the chosen cells, one minibatch at a time, in order, on the model's device.

        scvi-tools' data loader needs the binned layer registered in memory, with the model's genes;
        a backed AnnData, one without that layer, or one with other genes (``genes``, from
        :meth:`align_genes`) is read in chunks, rearranged into the model's genes and binned like the
        training data instead (:func:`bioformers.data.binned_batches`). Without ``genes``, ``adata``
        must have exactly the model's genes (:meth:`check_genes`). Tools reach this through
        :meth:`Query.batches <bioformers.model.base.Query.batches>` of :meth:`prepare_query`.

        Parameters
        ----------
        adata
            Cells to read; ``None`` means the training data.
        indices
            Cells to read; ``None`` means all.
        batch_size
            Cells per batch.
        genes, counts_layer, chunk_size
            As in :meth:`get_latent_representation`.

        Yields
        ------
        :class:`~torch.Tensor`
            ``(cells, n_genes)`` bins of the model's genes.
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
            self.module.eval()
            for bins in map(torch.from_numpy, streamed):
                yield bins.to(self.device)
            return
        with registered(self, adata) as work:
            self.module.eval()
            for tensors in self._make_data_loader(adata=work, indices=indices, batch_size=batch_size):
                yield tensors[REGISTRY_KEYS.X_KEY].to(self.device)
