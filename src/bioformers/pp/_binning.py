"""Value binning: turn a cell's counts into the integer value tokens the model reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scanpy import logging as logg
from scipy import sparse

from .._docs import DOC_COUNTS_LAYER, DOC_RETURNS_TARGET_SUM, DOC_TOKENS_KEY_ADDED, DOC_X_COUNTS, doc_params, doc_tokens
from .._record import params_record
from .._validation import check_anndata, check_counts, get_matrix, matrix_name
from ._counts import canonical_csr, row_ids, row_totals
from ._layer import MAX_TOKEN, is_int, write_tokens

if TYPE_CHECKING:
    from anndata import AnnData

_DEFAULT_SEGMENT_BINS = 50


@doc_params(**doc_tokens("binned", "binning"), layer=DOC_COUNTS_LAYER, key_added=DOC_TOKENS_KEY_ADDED)
def bin(
    adata: AnnData,
    *,
    method: Literal["value", "segment"] = "value",
    n_bins: int | None = None,
    cutoff: float = 8,
    bins_per_octave: int = 3,
    normalize: bool = True,
    target_sum: float | None = None,
    layer: str | None = None,
    key_added: str = "bioformers",
    copy: bool = False,
) -> AnnData | None:
    """Bin expression values into integer value tokens.

    Zeros are always bin 0 and every nonzero value gets a bin of at least 1, so the binned
    layer has exactly the sparsity pattern of the input. Only the stored nonzeros are touched;
    the matrix is never densified. CSR, CSC and dense inputs give identical results, and
    binning is deterministic (no random tie-breaking).

    ``method="value"``
        If ``normalize``, every cell is first scaled to the total ``target_sum`` (by default the
        dataset's mean total count), ``x * target_sum / cell_total``. Then each value ``x`` maps to

        * ``0`` if ``x == 0``;
        * ``1`` if ``0 < x <= 1``;
        * ``floor(x + 0.5)`` if ``1 < x <= c``, i.e. rounding half **up** (2.5 -> 3), not
          Python's round-half-to-even;
        * ``floor(c + 0.5) + ceil((log2(x) - log2(c)) * b)`` if ``x > c``,

        with ``c = cutoff`` and ``b = bins_per_octave``: small counts stay exact, large ones
        are binned on a log2 scale with ``b`` bins per doubling.
    ``method="segment"``
        Per cell, the nonzero values are cut into ``n_bins`` equal-frequency intervals. For
        one of the cell's ``n`` nonzero values ``v``, ``F(v) = #{nonzero values <= v} / n`` and
        the bin is ``ceil(F(v) * n_bins)``, in ``1..n_bins``; tied values share a bin. Being
        rank based within a cell, it needs no normalisation and is comparable across batches.

    Every cell needs a count: cells with no counts raise an error (remove them with
    ``sc.pp.filter_cells(adata, min_counts=1)``). Genes with no counts are fine: all their bins
    are 0. Counts must be finite, non-negative and, for ``"value"`` with ``normalize``, whole
    numbers, in an integer, ``float32`` or ``float64`` matrix. Everything is checked before
    anything is written.

    Parameters
    ----------
    {tokens_adata}
    method
        ``"value"`` (exact small counts, log-scale large ones) or ``"segment"``
        (per-cell equal-frequency bins).
    n_bins
        For ``"segment"``, the number of nonzero bins (default 50). For ``"value"``, an
        optional cap: bins above ``n_bins`` are clipped to ``n_bins``; `None` means no cap.
    cutoff
        ``"value"`` only: the count ``c`` above which bins become logarithmic. Must be > 1.
    bins_per_octave
        ``"value"`` only: the number of bins ``b`` per doubling above ``cutoff``.
    normalize
        ``"value"`` only: scale each cell to ``target_sum`` first. This needs raw
        (integer) counts; pass `False` to bin values that are already normalised.
        Ignored by ``"segment"``.
    target_sum
        ``"value"`` with ``normalize`` only: the total every cell is scaled to; `None` means the
        mean total count of the cells binned. Bin a query with the ``target_sum`` recorded for
        the training data, so both are on one scale (:func:`bioformers.tl.embed` does).
    {layer}
    {key_added}
    {tokens_copy}

    Returns
    -------
    {returns_tokens}

        ``adata.layers['bioformers_binned']`` : :class:`~scipy.sparse.csr_matrix` ``int16`` (n_obs, n_vars)
            The bin of every value; zeros are not stored.
        ``adata.uns['bioformers_binned']['params']`` : :class:`dict`
            ``method``, ``n_bins`` (the number used for ``"segment"``; absent for ``"value"``
            without a cap), ``cutoff``, ``bins_per_octave``, ``normalize``, ``target_sum`` (the
            total cells were scaled to, also when it was the mean; absent when nothing was scaled),
            ``layer`` (absent for ``adata.X``) and the bioformers ``version``. Unset options are
            left out because h5ad cannot store `None`.
        ``adata.uns['bioformers_binned']['n_tokens']`` : :class:`int`
            Size of the value vocabulary: the largest bin present + 1 for ``"value"``,
            ``n_bins + 1`` for ``"segment"``.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> bf.pp.bin(adata)
    >>> adata.layers["bioformers_binned"].dtype
    dtype('int16')
    >>> bf.pp.bin(adata, target_sum=1e3, key_added="per_thousand")
    >>> adata.uns["per_thousand_binned"]["params"]["target_sum"]
    1000.0
    >>> bf.pp.bin(adata, method="segment", n_bins=51, key_added="segment")
    >>> adata.uns["segment_binned"]["n_tokens"]
    52
    """
    check_anndata(adata, copy=copy, backed=True)
    X = get_matrix(adata, layer)
    where = matrix_name(layer)
    if method not in ("value", "segment"):
        raise ValueError(
            f"Unknown `method={method!r}`. Pass `method='value'` or `method='segment'`"
            + ("; rank tokens come from `bf.pp.rank(adata)`." if method == "rank" else ".")
        )
    if n_bins is None and method == "segment":
        n_bins = _DEFAULT_SEGMENT_BINS
    if n_bins is not None and not is_int(n_bins, 1, MAX_TOKEN):
        raise ValueError(f"`n_bins={n_bins!r}` must be an integer from 1 to {MAX_TOKEN}, or None.")
    if not (np.isfinite(cutoff) and cutoff > 1):
        raise ValueError(
            f"`cutoff={cutoff!r}` must be a finite number > 1: counts up to `cutoff` keep their exact value."
        )
    if not is_int(bins_per_octave, 1, MAX_TOKEN):
        raise ValueError(f"`bins_per_octave={bins_per_octave!r}` must be a positive integer (the paper uses 3).")
    if target_sum is not None and not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"`target_sum={target_sum!r}` must be a positive number, or None for the mean total count.")
    check_counts(X, where=where, require_integer=method == "value" and normalize)

    start = logg.info(f"binning {where} (method={method!r})")
    binned, target_sum = bin_counts(
        X,
        method=method,
        n_bins=n_bins,
        cutoff=cutoff,
        bins_per_octave=bins_per_octave,
        normalize=normalize,
        target_sum=target_sum,
    )
    n_tokens = n_bins + 1 if method == "segment" else int(binned.data.max(initial=0)) + 1

    params = params_record(
        method=method,
        n_bins=None if n_bins is None else int(n_bins),
        cutoff=float(cutoff),
        bins_per_octave=int(bins_per_octave),
        normalize=bool(normalize),
        target_sum=target_sum,
        layer=layer,
    )

    return write_tokens(
        adata,
        binned,
        params,
        n_tokens,
        key_added=key_added,
        copy=copy,
        start=start,
        tokens_are="binned values",
        params_are="binning parameters",
    )


@doc_params(X=DOC_X_COUNTS, returns_target_sum=DOC_RETURNS_TARGET_SUM)
def bin_counts(
    X,
    *,
    method: Literal["value", "segment"] = "value",
    n_bins: int | None = None,
    cutoff: float = 8,
    bins_per_octave: int = 3,
    normalize: bool = True,
    target_sum: float | None = None,
) -> tuple[sparse.csr_matrix, float | None]:
    """The arithmetic of :func:`bin` on one matrix, without its checks of arguments and counts.

    Every row is binned on its own, given ``target_sum``, so binning a matrix in chunks of rows
    gives exactly the bins of binning it whole (with ``target_sum=None`` only if each chunk is the
    whole matrix: the default total is the mean over the rows given).

    Parameters
    ----------
    {X}
    method, n_bins, cutoff, bins_per_octave, normalize, target_sum
        As for :func:`bin`.

    Returns
    -------
    binned : :class:`~scipy.sparse.csr_matrix`
        The bins, ``int16``, of the shape of ``X``.
    {returns_target_sum}
    """
    counts = canonical_csr(X)
    if method == "value":
        scale = normalize and counts.shape[0] > 0
        totals = row_totals(counts) if scale else None
        if scale and target_sum is None:
            target_sum = totals.mean()
        bins = _value_bins(counts, cutoff=cutoff, bins_per_octave=bins_per_octave, totals=totals, target_sum=target_sum)
        if n_bins is not None:
            np.minimum(bins, n_bins, out=bins)
        if bins.size and bins.max() > MAX_TOKEN:
            raise ValueError(
                f"The largest bin ({bins.max():.0f}) does not fit in int16. Cap it with `n_bins=`, "
                "or lower `bins_per_octave=` or `cutoff=`."
            )
        target_sum = float(target_sum) if scale else None
    else:
        bins = _segment_bins(counts, n_bins=n_bins or _DEFAULT_SEGMENT_BINS)
        target_sum = None
    binned = sparse.csr_matrix((bins.astype(np.int16), counts.indices, counts.indptr), shape=counts.shape)
    return binned, target_sum


def _value_bins(
    counts: sparse.csr_matrix,
    *,
    cutoff: float,
    bins_per_octave: int,
    totals: np.ndarray | None,
    target_sum: float | None,
) -> np.ndarray:
    """Value bins of the stored counts; rows are scaled to ``target_sum`` when ``totals`` are given."""
    x = counts.data
    if totals is not None:
        x = x * target_sum / totals[row_ids(counts)]
    bins = np.floor(x + 0.5)  # half-up rounding; the bin of (0, 1] is 1, set next
    np.maximum(bins, 1, out=bins)
    high = x > cutoff
    bins[high] = np.floor(cutoff + 0.5) + np.ceil((np.log2(x[high]) - np.log2(cutoff)) * bins_per_octave)
    return bins


def _segment_bins(counts: sparse.csr_matrix, *, n_bins: int) -> np.ndarray:
    rows = row_ids(counts)
    order = np.lexsort((counts.data, rows))
    sorted_rows, sorted_values = rows[order], counts.data[order]
    # A tie group (same row, same value) ends where the next element differs in row or value;
    # the number of the row's values <= v is the position of its group's end within the row, plus one.
    last_of_group = np.ones(order.size, dtype=bool)
    last_of_group[:-1] = (sorted_rows[1:] != sorted_rows[:-1]) | (sorted_values[1:] != sorted_values[:-1])
    group_end = np.flatnonzero(last_of_group)
    group_of = np.cumsum(last_of_group) - last_of_group
    n_le = group_end[group_of] - counts.indptr[sorted_rows] + 1
    n_row = np.diff(counts.indptr)[sorted_rows]
    bins = np.empty(order.size, dtype=np.int64)
    bins[order] = -(-n_le * n_bins // n_row)  # ceil(n_le / n_row * n_bins) in exact integer arithmetic
    return bins


def bin_centers(params: dict, n_tokens: int) -> np.ndarray | None:
    """A representative value for each bin of value binning, ``(n_tokens,)``; ``None`` for segment bins.

    Maps model predictions made in bins back to the scale the bins came from (normalised counts
    when ``normalize=True``): bins up to ``round(c)`` are the counts themselves (bin 1 stands for
    ``(0, 1]``), and a log-scale bin ``round(c) + k`` is the geometric middle of its interval
    ``(c * 2**((k - 1) / b), c * 2**(k / b)]``. Segment bins are per-cell quantiles with no
    common value scale.

    Parameters
    ----------
    params
        ``adata.uns["<key>_binned"]["params"]`` as written by :func:`bin`.
    n_tokens
        Number of bin values (largest bin + 1).
    """
    if params.get("method", "value") != "value":
        return None
    cutoff, per_octave = float(params.get("cutoff", 8)), int(params.get("bins_per_octave", 3))
    exact = np.floor(cutoff + 0.5)
    bins = np.arange(n_tokens, dtype=np.float64)
    k = bins - exact
    return np.where(k <= 0, bins, cutoff * 2 ** ((k - 0.5) / per_octave)).astype(np.float32)
