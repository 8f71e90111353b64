"""Count matrices as value binning and rank tokens read them: one canonical CSR form, its rows and their totals."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .._docs import DOC_X_COUNTS, doc_params


@doc_params(X=DOC_X_COUNTS)
def canonical_csr(X) -> sparse.csr_matrix:
    """CSR with sorted indices, summed duplicates and no explicit zeros, without touching ``X``.

    Converting every input to this one form first is what makes CSR, CSC and dense agree exactly.

    Parameters
    ----------
    {X}

    Returns
    -------
    :class:`~scipy.sparse.csr_matrix`
        A ``float64`` copy of ``X``.
    """
    counts = sparse.csr_matrix(X if sparse.issparse(X) else np.asarray(X), dtype=np.float64, copy=True)
    counts.sum_duplicates()
    counts.eliminate_zeros()
    return counts


def row_ids(counts: sparse.csr_matrix) -> np.ndarray:
    """The row of every stored value of a CSR matrix, ``(nnz,)``."""
    return np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))


def row_totals(counts: sparse.csr_matrix) -> np.ndarray:
    """Total of every row of a CSR matrix from :func:`canonical_csr`, ``(n_rows,)`` float64."""
    return np.bincount(row_ids(counts), weights=counts.data, minlength=counts.shape[0])


@doc_params(X=DOC_X_COUNTS)
def cell_totals(X) -> np.ndarray:
    """Total count of every row, ``(n_rows,)`` float64, summed exactly as :func:`bioformers.pp.bin` sums them.

    Parameters
    ----------
    {X}

    Returns
    -------
    :class:`~numpy.ndarray`
        ``float64`` ``(n_rows,)``.
    """
    return row_totals(canonical_csr(X))
