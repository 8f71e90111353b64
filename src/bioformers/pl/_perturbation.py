"""Perturbation response: predicted against observed change for one perturbation, and scores per method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._docs import (
    DOC_PERTURBATION_KEY,
    DOC_RETURNS_AX,
    DOC_SHOW_AX,
    DOC_SHOW_AX_SIZED,
    doc_layer_lognorm,
    doc_params,
)
from .._validation import shown
from ..metrics._checks import _check_int
from ..metrics._perturbation import (
    _align_genes,
    _check_control,
    _check_perturbations,
    _check_t_test_sizes,
    _expression,
    _group_sizes,
    _labels,
    _means,
    _pearson,
    _predicted_profiles,
    _rank_genes,
)
from ._utils import _finish, _gene_index

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_OBSERVED_COLOR = "tab:blue"
_PREDICTED_COLOR = "tab:orange"
_LABEL_COLUMNS = ("method", "split", "perturbation")


@doc_params(
    perturbation_key=DOC_PERTURBATION_KEY,
    layer=doc_layer_lognorm("observed"),
    show_ax=DOC_SHOW_AX_SIZED,
    returns_ax=DOC_RETURNS_AX,
)
def perturbation(
    predicted: AnnData | pd.DataFrame,
    observed: AnnData,
    perturbation: str,
    *,
    genes: str | Sequence[str] | None = None,
    n_top_genes: int = 20,
    perturbation_key: str = "perturbation",
    control: str = "control",
    layer: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Predicted against observed change from control of one perturbation, gene by gene.

    Paired horizontal bars per gene: the observed and the predicted change of the mean
    log-normalised expression from the mean of the observed control cells. The title gives the
    Pearson correlation of the two changes on the genes shown.

    Parameters
    ----------
    predicted
        The prediction: an AnnData of predicted cells labelled in ``obs[perturbation_key]``, with
        predicted log-normalised expression in `X` (as the model returns it), or a DataFrame of
        predicted mean profiles (perturbations x genes, e.g. from
        `bf.metrics.perturbation_baselines`).
    observed
        Observed log-normalised expression, including control cells, labelled in
        ``obs[perturbation_key]``; the same genes as `predicted`, in any order.
    perturbation
        The perturbation to show.
    genes
        Genes to show, in this order (one name or a list); `None`: the `n_top_genes` top DE genes
        of `perturbation` in `observed` (`bf.metrics.top_de_genes`), most significant first.
    n_top_genes
        Number of top DE genes shown when `genes` is `None`.
    {perturbation_key}
    {layer}
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=400, n_vars=30)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> train = adata[adata.obs["perturbation"] != "unmeasured_0"].copy()
    >>> predicted = bf.metrics.perturbation_baselines(train, ["unmeasured_0"], methods=["train_mean"])
    >>> ax = bf.pl.perturbation(predicted["train_mean"], adata, "unmeasured_0", n_top_genes=10, show=False)
    >>> ax.get_title()
    'unmeasured_0 (top 10 DE genes): corr(Δ) = 0.80'
    """
    _check_int(n_top_genes, "n_top_genes", 1)
    labels = _labels(observed, perturbation_key)
    counts = _group_sizes(labels)
    _check_control(counts, control, perturbation_key)
    (perturbation,) = _check_perturbations([perturbation], counts, control, perturbation_key, where="observed")
    profiles = _predicted_profiles(predicted, perturbation_key=perturbation_key, control=control)
    if perturbation not in profiles.index:
        raise ValueError(
            f"`predicted` has no prediction for {perturbation!r}; it predicts {shown(profiles.index)}. "
            "Pass one of those, or predict this perturbation first."
        )
    profiles = _align_genes(profiles, observed.var_names, "predicted", "observed")
    if genes is None:
        _check_t_test_sizes(counts, [control, perturbation])
    else:
        index = _gene_index(observed, [genes] if isinstance(genes, str) else genes)
    X = _expression(observed, layer)
    if genes is None:
        top = _rank_genes(X, labels, observed.var_names, control, [perturbation], n_top_genes)[perturbation]
        index = observed.var_names.get_indexer(top)

    means = _means(X, labels, observed.var_names, perturbation_key)
    control_mean = means.loc[control].to_numpy()[index]
    observed_delta = means.loc[perturbation].to_numpy()[index] - control_mean
    predicted_delta = profiles.loc[perturbation].to_numpy(dtype=np.float64)[index] - control_mean
    names = observed.var_names[index]
    n = len(names)

    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, max(2.5, 1.4 + 0.28 * n)))
    position = np.arange(n)
    height = 0.4
    ax.barh(position - height / 2, observed_delta, height=height, color=_OBSERVED_COLOR, label="observed")
    ax.barh(position + height / 2, predicted_delta, height=height, color=_PREDICTED_COLOR, label="predicted")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(position, names, fontsize=min(10.0, max(5.0, 300 / max(n, 1))))
    ax.set_ylim(n - 0.5, -0.5)  # the first gene on top
    ax.set_xlabel("change from control (mean log-normalised expression)")
    ax.legend(loc="best", frameon=False)
    which = f"top {n} DE genes" if genes is None else f"{n} gene{'s' if n != 1 else ''}"
    if not np.isfinite(predicted_delta).all():
        summary = "no prediction (NaN)"
    elif np.isfinite(corr := _pearson(predicted_delta, observed_delta)):
        summary = f"corr(Δ) = {corr:.2f}"
    else:
        summary = "corr(Δ) undefined, a constant change"
    ax.set_title(f"{perturbation} ({which}): {summary}")
    return _finish(ax, show=show, return_fig=return_fig)


@doc_params(show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX)
def perturbation_scores(
    scores: pd.DataFrame,
    *,
    metric: str = "pearson_delta",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Bar chart of one perturbation score per method: the mean over rows, with each row as a point.

    Bars are the mean of `metric` over the rows of each method, error bars one standard deviation
    (none for a single row), points the rows themselves (coloured by split when `scores` has a
    ``split`` column with several values). Missing values (e.g. an undefined correlation) are
    left out; a method with none left shows "n/a".

    Parameters
    ----------
    scores
        A long table with a ``method`` column (or index level) and the score columns, one row per
        method and perturbation (and split), e.g. the outputs of `bf.metrics.perturbation_scores`
        of several methods joined by ``pd.concat({method: scores, ...}, names=["method"])``.
    metric
        The column to plot, e.g. ``"pearson_delta"`` or ``"mse_top"``.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import pandas as pd
    >>> import bioformers as bf
    >>> scores = pd.DataFrame(
    ...     {
    ...         "method": ["train_mean"] * 3 + ["linear"] * 3,
    ...         "perturbation": ["A", "B", "C"] * 2,
    ...         "pearson_delta": [0.4, 0.5, 0.3, 0.7, 0.6, 0.8],
    ...     }
    ... )
    >>> ax = bf.pl.perturbation_scores(scores, show=False)
    >>> ax.get_title()
    'pearson_delta: mean ± sd over perturbations'
    """
    table = _long_table(scores)
    if metric not in table.columns:
        available = [column for column in table.columns if column not in _LABEL_COLUMNS]
        raise KeyError(
            f"Metric {metric!r} is not a column of `scores`. Available: {shown(available)}; pass one with `metric=`."
        )
    values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=np.float64)
    methods = table["method"].astype(str).to_numpy()
    order = list(dict.fromkeys(methods))
    splits = table["split"].astype(str).to_numpy() if "split" in table.columns else None
    split_order = list(dict.fromkeys(splits)) if splits is not None else []

    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.5, 1.2 + 0.9 * len(order)), 4.0))
    rng = np.random.default_rng(0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    finite = np.isfinite(values)
    for x, method in enumerate(order):
        rows = (methods == method) & finite
        if not rows.any():
            ax.bar(x, np.nan, width=0.7)
            ax.text(x, 0, "n/a", ha="center", va="bottom", color="0.4")
            continue
        mean = values[rows].mean()
        std = values[rows].std(ddof=1) if rows.sum() > 1 else 0.0
        ax.bar(x, mean, width=0.7, yerr=std, capsize=4, color="0.85", edgecolor="0.4", error_kw={"ecolor": "0.3"})
        jitter = rng.uniform(-0.2, 0.2, size=int(rows.sum()))
        if len(split_order) > 1:
            point_colors = [colors[split_order.index(split) % len(colors)] for split in splits[rows]]
        else:
            point_colors = "black"
        ax.scatter(x + jitter, values[rows], s=14, c=point_colors, alpha=0.8, zorder=3, linewidths=0)
    if len(split_order) > 1:
        for i, split in enumerate(split_order):
            ax.scatter([], [], s=14, color=colors[i % len(colors)], label=split)
        ax.legend(title="split", frameon=False, loc="best")
    if finite.any() and values[finite].min() < 0:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        np.arange(len(order)), order, rotation=30 if len(order) > 4 else 0, ha="right" if len(order) > 4 else "center"
    )
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± sd over {'rows' if 'perturbation' not in table.columns else 'perturbations'}")
    return _finish(ax, show=show, return_fig=return_fig)


def _long_table(scores: pd.DataFrame) -> pd.DataFrame:
    """`scores` with ``method`` (and other labels kept in the index) as columns."""
    if not isinstance(scores, pd.DataFrame):
        raise TypeError(f"`scores` must be a DataFrame with a `method` column, not {type(scores).__name__}.")
    if "method" not in scores.columns and "method" in scores.index.names:
        scores = scores.reset_index()
    if "method" not in scores.columns:
        raise KeyError(
            "`scores` has no `method` column (or index level). Join the scores of several methods with "
            "`pd.concat({method: scores, ...}, names=['method'])`."
        )
    return scores
