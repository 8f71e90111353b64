"""Masked-prediction metrics in bin space, and the paper's linear baseline (BioFormers, Table 2 and 3).

A masked-prediction benchmark hides some (cell, gene) positions of held-out cells, asks a
predictor for their bins, and scores the answers. Bins are non-negative integers and bin 0 means
"not expressed" (:func:`bioformers.pp.bin`).

* :func:`sensitivity`: among masked expressed positions, the share predicted exactly.
* :func:`hel_sensitivity`: among masked positions above a cutoff bin, the share predicted
  within one bin.
* :func:`npv`: among masked positions predicted 0, the share truly 0. NPV-50 is this number
  on a mask with as many unexpressed as expressed genes per cell, drawn by :func:`balanced_mask`.
* :func:`bin_confusion`: the predicted bins of masked positions of one true bin (Table 3).
* :func:`masked_prediction_scores`: the three scores of one predictor as a dict.
* :func:`compare_masked_prediction`: the same scores for several predictors, one row each.
* :class:`LinearBaseline`: per gene, ordinary least squares on its ``k`` most correlated genes.

Masking changes what a predictor sees, so NPV-50 needs predictions made with the balanced
mask: a second run of each predictor. Both aggregate functions therefore take that mask and its
predictions as a separate pair of keyword arguments, ``balanced_mask=`` with ``balanced_pred=``
(one predictor) or ``balanced_predictions=`` (a dict, several predictors); this pair replaces a
single ``balanced=(mask, predictions)`` tuple so that both functions read alike. Comparing
predictors fairly means computing every prediction on the same cells with the same masks; the
caller does that and hands the results over.

Metric inputs are ``(cells, genes)`` arrays; the bin matrices may also be SciPy sparse (only the
masked positions are read) and the mask is boolean, `True` where a value was hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from threadpoolctl import threadpool_limits

from .._docs import doc_params

_SCORES = ("sensitivity", "hel_sensitivity")

#: The arguments of every score of one predictor's masked predictions.
_DOC_SCORED = """\
true_bins
    True bins, ``(cells, genes)``, dense or sparse.
pred_bins
    Predicted bins, same shape, dense or sparse.
mask
    Boolean, same shape: `True` at the positions the predictor could not see."""

#: The arguments of the predictions of :class:`LinearBaseline`.
_DOC_BINS_MASK = """\
bins
    Bins of the cells to predict, ``(cells, genes)`` with the training genes, dense or
    sparse. Masked values are never read.
mask
    Boolean, same shape: `True` at the hidden positions, replaced by the gene's training mean."""


@doc_params(scored=_DOC_SCORED)
def sensitivity(true_bins, pred_bins, mask) -> float:
    """Share of masked expressed positions whose bin is predicted exactly.

    Parameters
    ----------
    {scored}

    Returns
    -------
    float
        ``#{masked, true > 0, pred == true} / #{masked, true > 0}``.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[0, 1, 2, 5]])
    >>> pred = np.array([[0, 1, 3, 5]])
    >>> bf.metrics.sensitivity(true, pred, np.ones_like(true, dtype=bool))
    0.6666666666666666
    """
    true, pred = _masked_pairs(true_bins, pred_bins, mask)
    expressed = true > 0
    if not expressed.any():
        raise ValueError(
            "No masked position has a true bin > 0, so sensitivity is undefined. Mask some expressed genes."
        )
    return float(np.mean(pred[expressed] == true[expressed]))


@doc_params(scored=_DOC_SCORED)
def hel_sensitivity(true_bins, pred_bins, mask, *, cutoff_bin: int) -> float:
    """High-expression-level sensitivity: share of masked high positions predicted within one bin.

    Parameters
    ----------
    {scored}
    cutoff_bin
        Positions with a true bin strictly above this bin are "high". For
        ``bf.pp.bin(method="value", cutoff=c)`` it is the bin of the count ``c``,
        ``floor(c + 0.5)``: 8 for the default ``c = 8``, above which bins are logarithmic.

    Returns
    -------
    float
        ``#{masked, true > cutoff_bin, |pred - true| <= 1} / #{masked, true > cutoff_bin}``.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[9, 10, 12, 3]])
    >>> pred = np.array([[10, 10, 14, 0]])
    >>> bf.metrics.hel_sensitivity(true, pred, np.ones_like(true, dtype=bool), cutoff_bin=8)
    0.6666666666666666
    """
    _check_cutoff_bin(cutoff_bin)
    true, pred = _masked_pairs(true_bins, pred_bins, mask)
    high = true > cutoff_bin
    if not high.any():
        raise ValueError(
            f"No masked position has a true bin > `cutoff_bin={cutoff_bin}` (largest masked true bin: "
            f"{int(true.max())}). Mask some highly expressed genes or lower `cutoff_bin=`."
        )
    return float(np.mean(np.abs(pred[high] - true[high]) <= 1))


@doc_params(scored=_DOC_SCORED)
def npv(true_bins, pred_bins, mask) -> float:
    """Negative predictive value: share of masked positions predicted 0 that are truly 0.

    NPV-50 is this value computed with a mask from :func:`balanced_mask` and predictions made
    with that mask.

    Parameters
    ----------
    {scored}

    Returns
    -------
    float
        ``#{masked, pred == 0, true == 0} / #{masked, pred == 0}``; NaN when no masked position is
        predicted 0, since NPV is then undefined (a property of the predictor, not an input error, so
        a comparison of several predictors still gets its table).

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[0, 0, 3, 1]])
    >>> pred = np.array([[0, 2, 3, 0]])
    >>> bf.metrics.npv(true, pred, np.ones_like(true, dtype=bool))
    0.5
    """
    true, pred = _masked_pairs(true_bins, pred_bins, mask)
    negative = pred == 0
    if not negative.any():
        return float("nan")
    return float(np.mean(true[negative] == 0))


def balanced_mask(true_bins, n_per_cell: int, *, seed: int = 0) -> np.ndarray:
    """Mask as many unexpressed as expressed genes in each cell, at random (the mask of NPV-50).

    Each cell gets ``m = min(n_per_cell, #expressed, #unexpressed)`` expressed and ``m``
    unexpressed genes, drawn uniformly without replacement. A cell short of either kind thus gets
    fewer of both, which keeps every cell, and so the whole mask, balanced; a cell with no gene of
    one kind gets none.

    Parameters
    ----------
    true_bins
        True bins, ``(cells, genes)``, dense or sparse.
    n_per_cell
        Number of expressed (and of unexpressed) genes to mask per cell; the paper's NPV-50
        masks 50 of each.
    seed
        Seed of the :func:`numpy.random.default_rng` generator; the same seed gives the same mask,
        for dense and sparse input alike.

    Returns
    -------
    :class:`~numpy.ndarray`
        Boolean array, ``(cells, genes)``, `True` at the masked positions.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[0, 0, 0, 1, 2, 3], [5, 0, 1, 1, 0, 0]])
    >>> mask = bf.metrics.balanced_mask(true, 2, seed=0)
    >>> (mask & (true > 0)).sum(axis=1), (mask & (true == 0)).sum(axis=1)
    (array([2, 2]), array([2, 2]))
    """
    if not _is_int(n_per_cell, 1):
        raise ValueError(f"`n_per_cell={n_per_cell!r}` must be a positive integer (the paper's NPV-50 uses 50).")
    bins = _check_bins(true_bins, "true_bins")
    if bins.ndim != 2:
        raise ValueError(f"`true_bins` must be 2-D (cells x genes), got shape {bins.shape}.")
    n_cells, n_genes = bins.shape
    if sparse.issparse(bins):
        bins = sparse.csr_matrix(bins, copy=True)
        bins.eliminate_zeros()
        bins.sort_indices()
        expressed_genes = (bins.indices[bins.indptr[i] : bins.indptr[i + 1]] for i in range(n_cells))
    else:
        expressed_genes = (np.flatnonzero(row) for row in bins)

    rng = np.random.default_rng(seed)
    mask = np.zeros((n_cells, n_genes), dtype=bool)
    all_genes = np.arange(n_genes)
    for i, expressed in enumerate(expressed_genes):
        m = min(n_per_cell, len(expressed), n_genes - len(expressed))
        if m == 0:
            continue
        unexpressed = np.setdiff1d(all_genes, expressed, assume_unique=True)
        mask[i, rng.choice(expressed, size=m, replace=False)] = True
        mask[i, rng.choice(unexpressed, size=m, replace=False)] = True
    if not mask.any():
        raise ValueError(
            "No cell has both expressed and unexpressed genes, so the balanced mask is empty. "
            "Check that `true_bins` holds bins (0 = not expressed) of cells x genes."
        )
    return mask


@doc_params(scored=_DOC_SCORED)
def bin_confusion(true_bins, pred_bins, mask, *, true_bin: int = 1) -> pd.DataFrame:
    """Predicted bins of the masked positions whose true bin is `true_bin` (the paper's Table 3).

    Parameters
    ----------
    {scored}
    true_bin
        The true bin to break down.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per predicted bin from 0 to the largest one predicted (bins never predicted get a
        count of 0), index ``"predicted_bin"``, columns ``"count"`` (int) and ``"share"`` (of the
        positions with true bin `true_bin`; the shares sum to 1).

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[1, 1, 1, 1, 2]])
    >>> pred = np.array([[0, 1, 1, 3, 2]])
    >>> bf.metrics.bin_confusion(true, pred, np.ones_like(true, dtype=bool))["count"].tolist()
    [1, 2, 0, 1]
    """
    if not _is_int(true_bin, 0):
        raise ValueError(f"`true_bin={true_bin!r}` must be a non-negative integer bin.")
    true, pred = _masked_pairs(true_bins, pred_bins, mask)
    predicted = pred[true == true_bin]
    if predicted.size == 0:
        raise ValueError(
            f"No masked position has true bin {true_bin}. Pass a `true_bin=` that occurs among the masked positions."
        )
    counts = np.bincount(predicted)
    index = pd.RangeIndex(len(counts), name="predicted_bin")
    return pd.DataFrame({"count": counts, "share": counts / predicted.size}, index=index)


def masked_prediction_scores(
    true_bins,
    pred_bins,
    mask,
    *,
    cutoff_bin: int,
    balanced_mask: np.ndarray | None = None,
    balanced_pred=None,
) -> dict[str, float]:
    """Sensitivity, HEL sensitivity and, given a balanced mask, NPV-50 of one predictor.

    Parameters
    ----------
    true_bins
        True bins, ``(cells, genes)``, dense or sparse.
    pred_bins
        Bins predicted with `mask` hidden, same shape.
    mask
        Boolean, same shape: `True` at the positions the predictor could not see.
    cutoff_bin
        Bin above which expression is high, see :func:`hel_sensitivity`.
    balanced_mask
        A mask from :func:`balanced_mask` of the same cells, for NPV-50.
    balanced_pred
        Bins predicted with `balanced_mask` hidden; give it together with `balanced_mask`.

    Returns
    -------
    dict
        ``{"sensitivity", "hel_sensitivity"}``, plus ``"npv50"`` when the balanced pair is given
        (NaN if the predictor predicts no zero there, see :func:`npv`).

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[0, 1, 2, 9], [3, 0, 10, 0]])
    >>> mask = np.ones_like(true, dtype=bool)
    >>> bf.metrics.masked_prediction_scores(true, true, mask, cutoff_bin=8)
    {'sensitivity': 1.0, 'hel_sensitivity': 1.0}
    """
    if (balanced_mask is None) != (balanced_pred is None):
        raise ValueError(
            "Pass `balanced_mask=` and `balanced_pred=` together (the bins predicted with that mask hidden), "
            "or neither to skip NPV-50."
        )
    scores = {
        "sensitivity": sensitivity(true_bins, pred_bins, mask),
        "hel_sensitivity": hel_sensitivity(true_bins, pred_bins, mask, cutoff_bin=cutoff_bin),
    }
    if balanced_mask is not None:
        scores["npv50"] = npv(true_bins, balanced_pred, balanced_mask)
    return scores


def compare_masked_prediction(
    true_bins,
    mask,
    predictions: Mapping[str, object],
    *,
    cutoff_bin: int,
    balanced_mask: np.ndarray | None = None,
    balanced_predictions: Mapping[str, object] | None = None,
) -> pd.DataFrame:
    """Score several predictors on the same masked cells, one row per predictor.

    Parameters
    ----------
    true_bins
        True bins, ``(cells, genes)``, dense or sparse.
    mask
        Boolean, same shape: `True` at the positions hidden from every predictor.
    predictions
        Predictor name -> bins it predicted with `mask` hidden, e.g.
        ``{"BioFormer": ..., "linear": LinearBaseline().fit(train).predict(true_bins, mask)}``.
    cutoff_bin
        Bin above which expression is high, see :func:`hel_sensitivity`.
    balanced_mask
        A mask from :func:`balanced_mask` of the same cells, for NPV-50.
    balanced_predictions
        Predictor name -> bins it predicted with `balanced_mask` hidden, for the same predictors
        as `predictions`; give it together with `balanced_mask`.

    Returns
    -------
    :class:`~pandas.DataFrame`
        Index ``"method"`` (the keys of `predictions`, in order), columns ``"sensitivity"``,
        ``"hel_sensitivity"`` and, with the balanced pair, ``"npv50"``.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> true = np.array([[0, 1, 2, 9], [3, 0, 10, 0]])
    >>> mask = np.ones_like(true, dtype=bool)
    >>> table = bf.metrics.compare_masked_prediction(
    ...     true, mask, {"oracle": true, "zeros": np.zeros_like(true)}, cutoff_bin=8
    ... )
    >>> table["sensitivity"].tolist()
    [1.0, 0.0]
    """
    if len(predictions) == 0:
        raise ValueError("`predictions` is empty; pass {name: predicted bins} for at least one predictor.")
    if (balanced_mask is None) != (balanced_predictions is None):
        raise ValueError("Pass `balanced_mask=` and `balanced_predictions=` together, or neither to skip NPV-50.")
    if balanced_predictions is not None and set(balanced_predictions) != set(predictions):
        missing = sorted(set(predictions) - set(balanced_predictions))
        extra = sorted(set(balanced_predictions) - set(predictions))
        raise ValueError(
            "`balanced_predictions` must have the same predictors as `predictions` "
            f"(missing: {missing or 'none'}, not in `predictions`: {extra or 'none'})."
        )
    rows = {
        name: masked_prediction_scores(
            true_bins,
            pred,
            mask,
            cutoff_bin=cutoff_bin,
            balanced_mask=balanced_mask,
            balanced_pred=None if balanced_predictions is None else balanced_predictions[name],
        )
        for name, pred in predictions.items()
    }
    columns = [*_SCORES, "npv50"] if balanced_mask is not None else list(_SCORES)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "method"
    return table


class LinearBaseline:
    """The paper's masked-prediction baseline: per gene, a linear regression on its most correlated genes.

    For every gene, :meth:`fit` picks the `k` other genes with the highest Pearson correlation with
    it across the training cells and fits ordinary least squares (with intercept) of the gene on
    them. The ranking uses the signed correlation, not its absolute value, as in the paper: a gene
    is predicted from genes that rise with it. Genes with zero variance have correlation 0 with
    every gene; ties are broken by gene order. When the predictors are collinear the minimum-norm
    least-squares solution is used (as :func:`numpy.linalg.lstsq` and scikit-learn give).

    :meth:`predict` never reads a masked value: masked predictor values are replaced by their
    gene's training mean before the regressions are applied.

    Parameters
    ----------
    k
        Number of predictor genes per gene (the paper uses 300). Must be smaller than the number
        of genes.

    Attributes
    ----------
    neighbors_
        ``(genes, k)`` int, the predictor genes of each gene, most correlated first.
    coef_
        ``(genes, k)`` float, the regression coefficients, in the order of `neighbors_`.
    intercept_
        ``(genes,)`` float, the regression intercepts.
    mean_
        ``(genes,)`` float, each gene's mean bin in the training cells.
    max_bin_
        The largest training bin; :meth:`predict` clips to ``[0, max_bin_]``.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> rng = np.random.default_rng(0)
    >>> train = rng.poisson(3, size=(100, 3))
    >>> train[:, 2] = train[:, 0] + train[:, 1]
    >>> model = bf.metrics.LinearBaseline(k=2).fit(train)
    >>> test = np.array([[1, 2, 3]])
    >>> model.predict(test, np.array([[False, False, True]]))[0, 2]
    np.int64(3)
    """

    def __init__(self, k: int = 300):
        if not _is_int(k, 1):
            raise ValueError(f"`k={k!r}` must be a positive integer (the paper uses 300).")
        self.k = k

    def fit(self, train_bins) -> LinearBaseline:
        """Choose each gene's predictors and fit its regression on training cells.

        Parameters
        ----------
        train_bins
            Bins of the training cells, ``(cells, genes)``, dense or sparse; densified here, so
            pass a few thousand genes (e.g. highly variable ones), not the whole transcriptome.

        Returns
        -------
        :class:`~bioformers.metrics.LinearBaseline`
            The fitted baseline itself.
        """
        X = _dense_float(_check_bins(train_bins, "train_bins"), "train_bins")
        n_cells, n_genes = X.shape
        if self.k >= n_genes:
            raise ValueError(
                f"`k={self.k}` must be smaller than the number of genes ({n_genes}): each gene is predicted "
                "from k other genes. Lower `k=`."
            )
        if n_cells < 2:
            raise ValueError(f"`train_bins` has {n_cells} cell(s); fitting needs at least 2 training cells.")

        self.mean_ = X.mean(axis=0)
        centred = X - self.mean_
        gram = centred.T @ centred  # scatter matrix: correlations and normal equations from one product
        scale = np.sqrt(np.diag(gram))
        scale[scale == 0] = 1.0
        corr = gram / scale[:, None] / scale[None, :]  # constant genes: their row and column are 0
        np.fill_diagonal(corr, -np.inf)
        self.neighbors_ = np.argsort(-corr, axis=1, kind="stable")[:, : self.k]

        self.coef_ = np.empty((n_genes, self.k))
        # Thousands of small solves: BLAS threads only add overhead (and stall on busy machines).
        with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("error", linalg.LinAlgWarning)
            for gene, predictors in enumerate(self.neighbors_):
                lhs, rhs = gram[np.ix_(predictors, predictors)], gram[predictors, gene]
                try:
                    self.coef_[gene] = linalg.solve(lhs, rhs, assume_a="pos", check_finite=False)
                except (linalg.LinAlgError, linalg.LinAlgWarning):  # collinear or constant predictors
                    self.coef_[gene] = linalg.lstsq(lhs, rhs)[0]
        self.intercept_ = self.mean_ - np.einsum("gk,gk->g", self.coef_, self.mean_[self.neighbors_])
        self.max_bin_ = int(X.max())
        self.n_genes_ = n_genes
        return self

    @doc_params(bins_mask=_DOC_BINS_MASK)
    def predict_values(self, bins, mask) -> np.ndarray:
        """Continuous predictions of every position, with the masked values hidden from the regressions.

        Parameters
        ----------
        {bins_mask}

        Returns
        -------
        :class:`~numpy.ndarray`
            ``(cells, genes)`` float, the regression output for every position.
        """
        if not hasattr(self, "coef_"):
            raise ValueError("This LinearBaseline is not fitted yet. Call `.fit(train_bins)` first.")
        bins = _check_bins(bins, "bins")
        if bins.ndim != 2 or bins.shape[1] != self.n_genes_:
            raise ValueError(
                f"`bins` has shape {bins.shape}, but the baseline was fitted on {self.n_genes_} genes. "
                "Pass cells x genes with the training genes, in the training order."
            )
        mask = _check_mask(mask, bins.shape)
        X = _dense_float(bins, "bins")
        X[mask] = np.broadcast_to(self.mean_, X.shape)[mask]
        n_genes = self.n_genes_
        weights = sparse.csc_matrix(
            (self.coef_.ravel(), self.neighbors_.ravel(), np.arange(0, n_genes * self.k + 1, self.k)),
            shape=(n_genes, n_genes),
        )  # column g holds gene g's coefficients at the rows of its predictors
        return np.asarray(X @ weights) + self.intercept_

    @doc_params(bins_mask=_DOC_BINS_MASK)
    def predict(self, bins, mask) -> np.ndarray:
        """Predicted bins of every position, with the masked values hidden from the regressions.

        Parameters
        ----------
        {bins_mask}

        Returns
        -------
        :class:`~numpy.ndarray`
            ``(cells, genes)`` int64: :meth:`predict_values` rounded half up (as
            :func:`bioformers.pp.bin` rounds) and clipped to ``[0, max_bin_]``.
        """
        values = self.predict_values(bins, mask)
        return np.clip(np.floor(values + 0.5), 0, self.max_bin_).astype(np.int64)


def _is_int(value, low: int) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= low


def _check_cutoff_bin(cutoff_bin) -> None:
    if not _is_int(cutoff_bin, 0):
        raise ValueError(
            f"`cutoff_bin={cutoff_bin!r}` must be a non-negative integer bin, e.g. 8 for "
            "`bf.pp.bin(method='value', cutoff=8)` (the bin of the count `cutoff`, floor(cutoff + 0.5))."
        )


def _check_bins(bins, name: str):
    """``bins`` as an ndarray or sparse matrix, after checking it holds non-negative integers."""
    if not sparse.issparse(bins):
        bins = np.asarray(bins)
    values = bins.data if sparse.issparse(bins) else bins
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"`{name}` has dtype {values.dtype}; expected integer bins.")
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; expected integer bins.")
    if values.size and values.min() < 0:
        raise ValueError(f"`{name}` contains negative values; bins are non-negative integers (0 = not expressed).")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise ValueError(
            f"`{name}` contains non-integer values; expected bins. Round continuous predictions first, "
            "e.g. `np.floor(x + 0.5)`."
        )
    return bins


def _check_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    mask = mask.toarray() if sparse.issparse(mask) else np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"`mask` has dtype {mask.dtype}; expected booleans (True = hidden). Pass `mask.astype(bool)`.")
    if mask.shape != shape:
        raise ValueError(f"`mask` has shape {mask.shape}, but the bins have shape {shape}; they must match.")
    return mask


def _dense_float(bins, name: str) -> np.ndarray:
    X = bins.toarray() if sparse.issparse(bins) else bins
    if X.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (cells x genes), got shape {X.shape}.")
    return np.array(X, dtype=np.float64)


def _values_at(bins, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if sparse.issparse(bins):
        return np.asarray(sparse.csr_matrix(bins)[rows, cols]).ravel().astype(np.int64)
    return bins[rows, cols].astype(np.int64)


def _masked_pairs(true_bins, pred_bins, mask) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted bins at the masked positions, as two int64 vectors."""
    true = _check_bins(true_bins, "true_bins")
    pred = _check_bins(pred_bins, "pred_bins")
    if true.shape != pred.shape:
        raise ValueError(f"`true_bins` has shape {true.shape} but `pred_bins` has shape {pred.shape}; they must match.")
    if true.ndim != 2:
        raise ValueError(f"`true_bins` must be 2-D (cells x genes), got shape {true.shape}.")
    mask = _check_mask(mask, true.shape)
    if not mask.any():
        raise ValueError("`mask` has no True entry; mask the positions to score (True = hidden from the predictor).")
    rows, cols = np.nonzero(mask)
    return _values_at(true, rows, cols), _values_at(pred, rows, cols)
