"""Predictions of the encoder network: expected bins of every gene, masked genes, attention, knockout effects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from ..._docs import DOC_BATCH_SIZE, doc_params
from ..._keys import COUNTS_KEY
from ...data import prediction_masks
from ...data._corpus import category_codes
from ...module import fit_count_decoder
from ...pp._genes import DEFAULT_MIN_GENE_COVERAGE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ...pp._genes import GeneAlignment


class MaskedPredictionMixin:
    """Expression decoded from CLS, masked gene modelling and attention, for models whose network is an encoder.

    Needs :class:`~bioformers.model.base.QueryMixin` (cells are read through its token batches) and a
    module with ``embed``, ``predict_expression``, ``predict_masked`` and ``attention``
    (:class:`~bioformers.module.BioFormerModule`).
    """

    def check_prediction_args(self, *, mask_ratio: float | None = None, layer: int = -1) -> None:
        """Raise a ``ValueError`` for a ``mask_ratio`` outside (0, 1) or a ``layer`` the model lacks.

        Parameters
        ----------
        mask_ratio
            As in :meth:`get_predicted_bins`; ``None`` is always valid.
        layer
            As in :meth:`get_attention`: a transformer block, negative counting from the end.
        """
        if mask_ratio is not None and not 0 < mask_ratio < 1:
            raise ValueError(f"`mask_ratio` must be None or lie in (0, 1), not {mask_ratio}.")
        n_layers = len(self.module.encoder.blocks)
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"`layer={layer}` does not exist; the model has {n_layers} layers (0 to {n_layers - 1}).")

    def check_count_decoder(self, what: str) -> None:
        """Raise a ``ValueError`` saying that ``what`` needs the count decoder, if the model has none.

        Parameters
        ----------
        what
            What needs it, as the start of the message (e.g. ``"Knockout effects"``).
        """
        if self.module.count_head is None:
            raise ValueError(
                f"{what} are decoded by the count decoder, which this model lacks (it was trained with "
                "`count_weight=0`, or without raw counts). Pretrain with `bf.tl.pretrain(adata)`'s default "
                "`count_weight`; `get_predicted_bins` and `bf.tl.grn(method='attention')` work without it."
            )

    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
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
        {batch_size}
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
        batches = self.binned_batches(
            adata, indices, batch_size or 128, genes=genes, counts_layer=counts_layer, chunk_size=chunk_size
        )
        expected_chunks, best_chunks = [], []
        with self.inference_context():
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

    def _finish_training(self) -> None:
        super()._finish_training()
        # streamed from disk (no AnnData): the caller fits the decoder on a sample of the cells
        if self.module.count_head is not None and self.has_counts and self.adata is not None:
            self.fit_count_decoder()

    def fit_count_decoder(self, adata: AnnData | None = None, *, steps: int = 4000, seed: int = 0) -> list[float]:
        """Fit the count decoder to the final cell embeddings of the training data (run at the end of ``train``).

        See :func:`bioformers.module.fit_count_decoder`; the network is unchanged, so
        embeddings stay the same.

        Parameters
        ----------
        adata
            Cells to fit on, with raw counts in ``X`` (and the model's batch column, if it has one):
            e.g. a sample of a corpus streamed from disk. `None`: the training data.
        steps
            Adam steps.
        seed
            Seed of the minibatch draws.

        Returns
        -------
        list of float
            The loss of every 100th step.
        """
        if adata is None:
            cls = torch.as_tensor(self.get_latent_representation(), device=self.device)
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY) if self.module.n_batch else None
            counts = sparse.csr_matrix(self.adata_manager.get_from_registry(COUNTS_KEY), dtype=np.float32)
        else:
            genes = self.align_genes(adata)
            cls = torch.as_tensor(self.get_latent_representation(adata, genes=genes), device=self.device)
            key = self.registry_["setup_args"].get("batch_key")
            codes = category_codes(adata.obs[key], self.condition_categories("batch")) if self.module.n_batch else None
            counts = genes.take(sparse.csr_matrix(adata.X, dtype=np.float32))
        batch = None if codes is None else torch.as_tensor(np.asarray(codes).ravel(), device=self.device)
        return fit_count_decoder(self.module, cls, counts, batch, steps=steps, seed=seed)

    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        library_size: float | None = None,
        batch_size: int | None = None,
        gene_symbols: str | None = None,
        min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
        genes: GeneAlignment | None = None,
        counts_layer: str | None = None,
        chunk_size: int | None = None,
    ) -> np.ndarray:
        """Each cell's expression decoded from its CLS state by the count decoder, scaled to ``library_size``.

        The decoder's share of every gene (scVI's ``px_scale``, the mean of the negative binomial the
        counts were trained under, divided by the library size) times ``library_size``: denoised,
        depth-normalised expression, as scVI's ``get_normalized_expression`` gives it.
        Batch-averaged when the model has batch tokens. Needs a model trained with the count
        objective (``count_weight > 0``, the default of :func:`bioformers.tl.pretrain`).

        Parameters
        ----------
        adata, indices
            As in :meth:`get_predicted_bins`.
        library_size
            Total each cell is scaled to; ``None``: the ``target_sum`` the training data was binned at
            (the scale of ``layers['bioformers_predicted']``), 1e4 when it was not normalised.
        {batch_size}
        gene_symbols, min_gene_coverage, genes, counts_layer, chunk_size
            As in :meth:`get_latent_representation`.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(n_cells, n_model_genes)``, columns in the order of ``model.genes_``.
        """
        self.check_count_decoder("Normalised expression values")
        if library_size is None:
            library_size = float(self.binning_.get("target_sum", 1e4))
        if adata is not None and genes is None:
            genes = self.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
        batches = self.binned_batches(
            adata, indices, batch_size or 128, genes=genes, counts_layer=counts_layer, chunk_size=chunk_size
        )
        chunks = []
        with self.inference_context():
            for bins in batches:
                chunks.append((self.module.normalized_expression(bins) * library_size).cpu())
        return torch.cat(chunks).numpy()

    @torch.inference_mode()
    def get_knockout_effects(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        regulators: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """In-silico knockout of each regulator, read through the count decoder: a regulator x target matrix.

        For every chosen cell and every regulator it expresses, the regulator's bin is set to 0 and
        the cell is decoded again (:meth:`get_normalized_expression`, at the training data's
        ``target_sum``), both with the regulator's own share left out and the others renormalised
        (removing a gene's counts raises every other gene's share: composition, not regulation). The
        weight of ``(regulator, target)`` is the mean, over the cells that express the regulator, of
        the decoded target minus the decoded target after the knockout, in normalised counts:
        positive when removing the regulator lowers the target. It is an effect *in the model*,
        which learned it from co-variation across cells; a causal claim needs a perturbation
        experiment. Raw: it includes the shift that knocking out *any* expressed gene causes, which
        :func:`bioformers.tl.grn` removes. Computed in fp32 (no autocast): the effects are small
        differences.

        Parameters
        ----------
        adata, indices
            As in :meth:`get_predicted_bins`.
        regulators
            Indices (into ``model.genes_``) of the genes to knock out; ``None``: every gene. Other
            rows are 0. Time grows with the number of (cell, expressed regulator) pairs.
        batch_size
            Knocked-out cells decoded at a time (default 64); memory grows with it.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(n_genes, n_genes)``, rows = knocked-out genes, columns = targets, in the
            order of ``model.genes_``; the diagonal (a gene's effect on itself) is 0, as are the rows
            of regulators no chosen cell expresses.
        """
        self.check_count_decoder("Knockout effects")
        n = self.genes_.size
        chosen = torch.zeros(n, dtype=torch.bool, device=self.device)
        rows = np.arange(n) if regulators is None else np.asarray(regulators)
        chosen[torch.as_tensor(rows, device=self.device)] = True
        size = batch_size or 64  # 256 was 12% faster on 2 cores but took 3x the memory (790 MiB)
        library = float(self.binning_.get("target_sum", 1e4))
        effect = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        count = torch.zeros(n, dtype=torch.float64, device=self.device)

        def without(shares: torch.Tensor, gene: torch.Tensor) -> torch.Tensor:
            # the shares of the other genes, renormalised without the regulator's own: removing a gene's
            # counts raises every other share, which is composition, not regulation
            own = shares[torch.arange(gene.numel(), device=shares.device), gene]
            return shares / (1 - own).clamp(min=1e-6)[:, None] * library

        for bins in self.binned_batches(adata, indices, 64):
            bins = bins.long()
            base = self.module.normalized_expression(bins)
            cells, genes = ((bins > 0) & chosen).nonzero(as_tuple=True)
            for start in range(0, cells.numel(), size):
                cell, gene = cells[start : start + size], genes[start : start + size]
                knocked = bins[cell].clone()
                knocked[torch.arange(cell.numel(), device=self.device), gene] = 0
                drop = without(base[cell], gene) - without(self.module.normalized_expression(knocked), gene)
                effect.index_add_(0, gene, drop.double())
                count.index_add_(0, gene, torch.ones_like(gene, dtype=torch.float64))
        effect = (effect / count.clamp(min=1)[:, None]).float().cpu().numpy()
        np.fill_diagonal(effect, 0)
        return effect

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
        with self.inference_context():
            for start, bins in zip(range(0, n_cells, size), self.binned_batches(adata, indices, size), strict=True):
                gene_mask = torch.from_numpy(mask[start : start + len(bins)]).to(bins.device)
                expected, best = self.module.predict_masked(bins, gene_mask)
                expected_chunks.append(expected.float().cpu())
                best_chunks.append(best.cpu())
        return torch.cat(expected_chunks).numpy(), torch.cat(best_chunks).numpy()

    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
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
        {batch_size}

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
        with self.inference_context():
            for bins in self.binned_batches(adata, indices, batch_size or 32):
                genes, weights = self.module.attention(bins, layer)
                weights = weights.double() if keep_heads else weights.double().mean(dim=1, keepdim=True)
                pair = (genes[:, :, None] * n + genes[:, None, :]).flatten()
                count.index_add_(0, pair, torch.ones_like(pair, dtype=torch.float64))
                for head in range(n_maps):
                    total[head].index_add_(0, pair, weights[:, head].flatten())
        mean = (total / count.clamp(min=1)).float().cpu().numpy().reshape(n_maps, n, n)
        return np.moveaxis(mean, 0, -1) if keep_heads else mean[0]
