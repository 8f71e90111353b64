"""Rank tokens (Geneformer): each cell's genes ranked by expression relative to the gene's typical level."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .._docs import DOC_COUNTS_LAYER, DOC_TOKENS_KEY_ADDED, doc_params, doc_tokens
from .._record import params_record
from .._validation import check_anndata, check_counts, get_matrix, matrix_name, shown
from ._counts import canonical_csr, row_ids, row_totals
from ._layer import MAX_TOKEN, is_int, write_tokens

if TYPE_CHECKING:
    from anndata import AnnData

#: Default number of rank tokens: the bin vocabulary of a byte (255 ranks + "unexpressed").
DEFAULT_N_RANKS = 255
#: Geneformer normalises every cell to 10,000 counts before dividing by the gene medians.
DEFAULT_TARGET_SUM = 1e4


@doc_params(**doc_tokens("ranked", "ranking"), layer=DOC_COUNTS_LAYER, key_added=DOC_TOKENS_KEY_ADDED)
def rank(
    adata: AnnData,
    *,
    n_ranks: int = DEFAULT_N_RANKS,
    target_sum: float = DEFAULT_TARGET_SUM,
    gene_medians: np.ndarray | Mapping[str, float] | pd.Series | None = None,
    layer: str | None = None,
    key_added: str = "bioformers",
    copy: bool = False,
) -> AnnData | None:
    """Rank each cell's expressed genes, Geneformer-style, into integer value tokens.

    As in Geneformer (Theodoris et al., 2023), every cell's counts are scaled to ``target_sum``,
    ``x * target_sum / cell_total``, then divided by each gene's *non-zero median*: the median of
    that scaled value over the cells that express the gene. This puts every gene on its own typical
    level, so ubiquitous high-count genes (ribosomal, mitochondrial) do not top every cell, and genes
    that are high *for them* (e.g. transcription factors) rise. The cell's expressed genes are ranked
    by the result, rank 1 = highest; ties are broken by gene position (earlier gene first), so ranking
    is deterministic.

    The models read value tokens where 0 is unexpressed and larger means more expressed, so rank
    ``r`` is written as the token ``max(n_ranks + 1 - r, 1)``: every cell's top gene gets
    ``n_ranks``, the next ``n_ranks - 1``, ..., and genes ranked beyond ``n_ranks`` all get 1
    ("expressed, low rank"). Unexpressed genes stay 0 and are not stored: the layer has exactly
    the sparsity pattern of the counts, and the matrix is never densified. A cell's genes sorted
    by token, highest first, are Geneformer's rank order; the token is the position from the top,
    capped. The default ``n_ranks=255`` keeps ranks distinct through the top 255 genes (the
    expressed genes of a typical cell on 2,000 highly variable genes) in a vocabulary of 256 tokens.

    Ranks are unchanged by any per-cell scaling of the input, so raw counts and already
    total-normalised values (e.g. counts per 10k) give the same tokens; log-transformed values do
    not (pass the raw counts with ``layer=``). ``target_sum`` does not change the ranks either: it
    sets the scale the medians are recorded on (Geneformer's published medians are per 10k counts).

    Genes expressed in no cell have no median: theirs is set to 1 (they are never ranked in these
    data; in a query ranked with these medians they are divided by 1). Every cell needs a count
    (remove empty cells with ``sc.pp.filter_cells(adata, min_counts=1)``). Values must be finite
    and non-negative in an integer, ``float32`` or ``float64`` matrix. Everything is checked
    before anything is written.

    Parameters
    ----------
    {tokens_adata}
    n_ranks
        Number of ranks with a token of their own (1 to 32,767); lower ranks share token 1.
    target_sum
        Total every cell is scaled to before dividing by the gene medians.
    gene_medians
        Non-zero median of every gene, on the ``target_sum`` scale. `None` computes them from
        ``adata``. To rank a query like reference data, pass the reference's medians: an array in
        ``adata``'s gene order (e.g. ``ref.uns["bioformers_binned"]["params"]["gene_medians"]``
        when the genes are the same, in the same order) or a mapping / :class:`~pandas.Series`
        from gene name to median, which must cover every gene of ``adata``. Medians must be
        positive and finite. :func:`bioformers.tl.embed` passes the training data's medians itself.
    {layer}
    {key_added}
        The models read value tokens there.
    {tokens_copy}

    Returns
    -------
    {returns_tokens}

        ``adata.layers['bioformers_binned']`` : :class:`~scipy.sparse.csr_matrix` ``int16`` (n_obs, n_vars)
            The rank token of every expressed gene, ``n_ranks`` for each cell's top gene down to 1;
            zeros are not stored.
        ``adata.uns['bioformers_binned']['params']`` : :class:`dict`
            ``method`` (``"rank"``), ``n_ranks``, ``target_sum``, ``gene_medians`` (``float64`` array
            (n_vars,), the medians used, in ``adata``'s gene order), ``layer`` (absent for
            ``adata.X``) and the bioformers ``version``.
        ``adata.uns['bioformers_binned']['n_tokens']`` : :class:`int`
            Size of the value vocabulary, ``n_ranks + 1``.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> bf.pp.rank(adata, n_ranks=10)
    >>> int(adata.layers["bioformers_binned"].max()), adata.uns["bioformers_binned"]["n_tokens"]
    (10, 11)

    A query ranked on the reference's medians, matched by gene name:

    >>> import pandas as pd
    >>> query = bf.datasets.synthetic(seed=1)
    >>> medians = pd.Series(adata.uns["bioformers_binned"]["params"]["gene_medians"], index=adata.var_names)
    >>> bf.pp.rank(query, n_ranks=10, gene_medians=medians)
    >>> bool((query.uns["bioformers_binned"]["params"]["gene_medians"] == medians.to_numpy()).all())
    True
    """
    check_anndata(adata, copy=copy, backed=True)
    X = get_matrix(adata, layer)
    where = matrix_name(layer)
    if not is_int(n_ranks, 1, MAX_TOKEN):
        raise ValueError(
            f"`n_ranks={n_ranks!r}` must be an integer from 1 to {MAX_TOKEN}: the number of top genes per cell "
            f"with a token of their own (default {DEFAULT_N_RANKS})."
        )
    if not (isinstance(target_sum, Real) and not isinstance(target_sum, bool) and 0 < target_sum < np.inf):
        raise ValueError(
            f"`target_sum={target_sum!r}` must be a positive number (Geneformer uses {DEFAULT_TARGET_SUM:g})."
        )
    if gene_medians is not None:
        gene_medians = _medians_for(gene_medians, adata.var_names)
    check_counts(X, where=where, require_integer=False)

    start = logg.info(f"ranking {where} (Geneformer-style, n_ranks={n_ranks})")
    tokens, gene_medians = rank_matrix(X, n_ranks=n_ranks, target_sum=target_sum, gene_medians=gene_medians)
    params = params_record(
        method="rank",
        n_ranks=int(n_ranks),
        target_sum=float(target_sum),
        gene_medians=gene_medians,
        layer=layer,
    )

    return write_tokens(
        adata,
        tokens,
        params,
        int(n_ranks) + 1,
        key_added=key_added,
        copy=copy,
        start=start,
        tokens_are="rank tokens",
        params_are="ranking parameters, gene medians",
    )


def rank_matrix(
    X,
    *,
    n_ranks: int = DEFAULT_N_RANKS,
    target_sum: float = DEFAULT_TARGET_SUM,
    gene_medians: np.ndarray | None = None,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The arithmetic of :func:`rank` on one matrix, without its checks of arguments and counts.

    With ``gene_medians`` given, every row is ranked on its own, so ranking a matrix in chunks of
    rows gives exactly the tokens of ranking it whole; `None` computes them from the rows given.

    Returns
    -------
    The rank tokens, an ``int16`` CSR matrix of the shape of ``X``, and the gene medians used,
    ``float64`` (n_cols,).
    """
    counts = canonical_csr(X)
    rows = row_ids(counts)
    scaled = counts.data * target_sum / row_totals(counts)[rows]
    if gene_medians is None:
        gene_medians = _nonzero_medians(scaled, counts.indices, counts.shape[1])
    relative = scaled / np.asarray(gene_medians, dtype=np.float64)[counts.indices]
    # within each row: highest relative value first, ties by gene position
    order = np.lexsort((counts.indices, -relative, rows))
    position = np.arange(order.size) - counts.indptr[rows[order]]  # 0 for each row's top gene
    tokens = np.empty(order.size, dtype=np.int16)
    tokens[order] = np.maximum(n_ranks - position, 1)
    ranked = sparse.csr_matrix((tokens, counts.indices, counts.indptr), shape=counts.shape)
    return ranked, gene_medians


def _nonzero_medians(values: np.ndarray, genes: np.ndarray, n_genes: int) -> np.ndarray:
    """Median of each gene's stored (non-zero) values; 1 for genes with none."""
    medians = pd.Series(values).groupby(genes).median()
    out = np.ones(n_genes, dtype=np.float64)
    out[medians.index.to_numpy()] = medians.to_numpy()
    return out


def _medians_for(gene_medians, var_names: pd.Index) -> np.ndarray:
    """``gene_medians`` as a checked ``float64`` array in the order of ``var_names``."""
    if isinstance(gene_medians, Mapping | pd.Series):
        medians = pd.Series(gene_medians)
        missing = var_names[~var_names.isin(medians.index)]
        if missing.size:
            raise KeyError(
                f"`gene_medians` has no median for {missing.size} gene(s) of adata ({shown(missing)}). Pass a median "
                "for every gene (e.g. the reference's, indexed by gene name), or subset adata to the reference's genes."
            )
        if not medians.index.is_unique:
            raise ValueError("`gene_medians` names some genes more than once. Pass one median per gene.")
        medians = medians.reindex(var_names).to_numpy()
    else:
        medians = np.asarray(gene_medians)
        if medians.ndim != 1 or medians.size != var_names.size:
            raise ValueError(
                f"`gene_medians` has shape {medians.shape}, but adata has {var_names.size} genes. Pass one median per "
                "gene in adata's order, or a mapping / pd.Series from gene name to median."
            )
    try:
        medians = np.array(medians, dtype=np.float64)  # a copy: the record must not share the caller's array
    except (TypeError, ValueError):
        raise TypeError("`gene_medians` must hold numbers, one median per gene.") from None
    bad = ~(np.isfinite(medians) & (medians > 0))
    if bad.any():
        raise ValueError(
            f"`gene_medians` holds {int(bad.sum())} value(s) that are not positive and finite "
            f"(e.g. for {shown(var_names[bad], limit=5)}). Medians of non-zero values are > 0; use 1 for genes never "
            "expressed in the reference."
        )
    return medians
