"""Value tokens however they are made: one dispatcher over value, segment and rank tokens, for matrices and AnnData.

A model records how its training data was tokenised (``adata.uns["<key>_binned"]["params"]``, its
``binning_``); a query, or chunks of cells streamed from disk, must be tokenised the same way. This
module reads such a record and calls :func:`~bioformers.pp.bin` or :func:`~bioformers.pp.rank` (or
their arithmetic) accordingly. It builds on ``_binning`` and ``_rank``; neither imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._docs import DOC_COUNTS_LAYER, DOC_RETURNS_TARGET_SUM, DOC_X_COUNTS, doc_params
from ._binning import bin as bin_values
from ._binning import bin_counts
from ._rank import DEFAULT_N_RANKS, DEFAULT_TARGET_SUM, rank, rank_matrix

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy import sparse

#: The arguments of :func:`~bioformers.pp.bin` and :func:`~bioformers.pp.rank` that define the tokens:
#: a query must be tokenised with the same ones.
BINNING_ARGS = ("method", "n_bins", "cutoff", "bins_per_octave", "normalize", "target_sum", "n_ranks", "gene_medians")


@doc_params(X=DOC_X_COUNTS, returns_target_sum=DOC_RETURNS_TARGET_SUM)
def bin_matrix(
    X,
    *,
    method: Literal["value", "segment", "rank"] = "value",
    n_bins: int | None = None,
    cutoff: float = 8,
    bins_per_octave: int = 3,
    normalize: bool = True,
    target_sum: float | None = None,
    n_ranks: int | None = None,
    gene_medians: np.ndarray | None = None,
) -> tuple[sparse.csr_matrix, float | None]:
    """The tokens of one matrix, as :func:`~bioformers.pp.bin` or :func:`~bioformers.pp.rank` computes them, unchecked.

    ``method="rank"`` gives the rank tokens of :func:`~bioformers.pp.rank` (with ``n_ranks``,
    ``target_sum`` and ``gene_medians``), the other methods the bins of :func:`~bioformers.pp.bin`,
    so that one call, given a record's :data:`BINNING_ARGS`, tokenises a query however the training
    data was. Neither the arguments nor the counts are checked.

    Every row is tokenised on its own, given ``target_sum`` (and ``gene_medians`` for ranks), so
    tokenising a matrix in chunks of rows gives exactly the tokens of tokenising it whole (with
    ``target_sum=None`` for value bins only if each chunk is the whole matrix: the default total is
    the mean over the rows given).

    Parameters
    ----------
    {X}
    method
        ``"value"`` or ``"segment"`` (:func:`~bioformers.pp.bin`), or ``"rank"`` (:func:`~bioformers.pp.rank`).
    n_bins, cutoff, bins_per_octave, normalize
        As for :func:`~bioformers.pp.bin`.
    target_sum
        As for :func:`~bioformers.pp.bin` or :func:`~bioformers.pp.rank`; `None` for ranks means
        ``rank``'s default.
    n_ranks
        ``"rank"`` only: as for :func:`~bioformers.pp.rank`; `None` means its default.
    gene_medians
        ``"rank"`` only: as for :func:`~bioformers.pp.rank`, an array in the order of the columns.

    Returns
    -------
    tokens : :class:`~scipy.sparse.csr_matrix`
        ``int16``, of the shape of ``X``.
    {returns_target_sum}

    Examples
    --------
    >>> import numpy as np
    >>> from bioformers.pp._tokens import bin_matrix
    >>> counts = np.array([[0, 1, 3, 40], [2, 0, 0, 6]])
    >>> bin_matrix(counts, normalize=False)[0].toarray()
    array([[ 0,  1,  3, 15],
           [ 2,  0,  0,  6]], dtype=int16)
    >>> bin_matrix(counts, method="rank", n_ranks=2)[0].toarray()
    array([[0, 1, 1, 2],
           [2, 0, 0, 1]], dtype=int16)
    """
    if method == "rank":
        target_sum = DEFAULT_TARGET_SUM if target_sum is None else target_sum
        ranked, _ = rank_matrix(X, n_ranks=n_ranks or DEFAULT_N_RANKS, target_sum=target_sum, gene_medians=gene_medians)
        return ranked, float(target_sum)
    return bin_counts(
        X,
        method=method,
        n_bins=n_bins,
        cutoff=cutoff,
        bins_per_octave=bins_per_octave,
        normalize=normalize,
        target_sum=target_sum,
    )


@doc_params(layer=DOC_COUNTS_LAYER)
def bin_as_recorded(adata: AnnData, params: Mapping, *, layer: str | None, key_added: str) -> None:
    """Tokenise ``adata`` in place as a binning record says.

    :func:`~bioformers.pp.rank` for a record of rank tokens, :func:`~bioformers.pp.bin` otherwise.

    Parameters
    ----------
    adata
        The AnnData to tokenise, in place.
    params
        ``adata.uns["<key>_binned"]["params"]`` of the training data (``model.binning_``); only the
        arguments that define the tokens are used (:data:`BINNING_ARGS`).
    {layer}
    key_added
        Base key of the results, as for :func:`~bioformers.pp.bin`.
    """
    options = {k: params[k] for k in BINNING_ARGS if k in params}
    if options.get("method") == "rank":
        del options["method"]
        rank(adata, layer=layer, key_added=key_added, **options)
    else:
        bin_values(adata, layer=layer, key_added=key_added, **options)
