"""Bins: how values fall into the bins of `bf.pp.bin`, and predicted against observed bins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy import sparse

from .._docs import DOC_RETURNS_AX, DOC_SHOW_AX, doc_key_added_read, doc_params
from .._keys import Keys
from .._validation import did_you_mean
from ._utils import _finish, _gene_index

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params(show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.pp.bin`"))
def binning(
    adata: AnnData,
    *,
    key_added: str = "bioformers",
    log: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Bar chart of how many values fall into each bin of `bf.pp.bin`.

    Bin 0 (not expressed, grey) counts the zeros of the sparse layer, cells x genes minus the
    stored nonzeros, without densifying it. Every bin of the vocabulary is shown, empty ones too.

    Parameters
    ----------
    adata
        Annotated data with the binned layer.
    {key_added}
    log
        Logarithmic count axis; zeros usually outnumber every other bin by far.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> bf.pp.bin(adata)
    >>> ax = bf.pl.binning(adata, show=False)
    >>> print(ax.get_title())
    value binning (exact up to 8, 3 bins/octave above)
    47.8% of values are 0
    """
    keys = Keys(key_added)
    binned = _binned(adata, keys)
    record = adata.uns.get(keys.binned, {})
    counts = _bin_counts(binned, n_tokens=int(record.get("n_tokens", 0)))

    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, min(10.0, 2 + 0.12 * counts.size)), 3.5))
    colors = ["0.6", *["tab:blue"] * (counts.size - 1)]
    ax.bar(np.arange(counts.size), counts, width=0.85, color=colors)
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("bin (0 = not expressed)")
    ax.set_ylabel("values (cells x genes)")
    ax.set_title(f"{_binning_description(record.get('params', {}))}\n{counts[0] / counts.sum():.1%} of values are 0")
    return _finish(ax, show=show, return_fig=return_fig)


@doc_params(
    show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.pp.bin` and `bf.tl.predict`")
)
def predicted_vs_observed(
    adata: AnnData,
    genes: str | Sequence[str] | None = None,
    *,
    key_added: str = "bioformers",
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Observed bin against the most likely predicted bin, from `bf.pp.bin` and `bf.tl.predict`.

    A confusion heatmap: column ``o`` shows how the values observed in bin ``o`` are spread over
    the predicted bins, as shares of that column (so rare high bins are as visible as common
    ones; empty columns stay blank). Perfect predictions lie on the dashed diagonal. The most
    likely bin is compared rather than the expected value, because it is on the scale of the
    observed bins for every binning method.

    The title leads with the exact-match share over the expressed (nonzero) values. Zeros are
    most values of single-cell data, so the share over all values is given beside the baseline
    that predicts 0 everywhere (its share is that of the zeros): a model only helps where it
    beats it. The last line says how `bf.tl.predict` predicted: each value hidden from the model
    while it was predicted (``mask_ratio``), or decoded from the cell's state, which saw every
    value (no masking: a denoised reconstruction, not a held-out prediction). Genes the model does
    not know (predicted bin -1) are left out.

    Parameters
    ----------
    adata
        Annotated data with the binned layer and the predicted bins.
    genes
        Restrict to these genes (one name or a list); `None`: all genes.
    {key_added}
    cmap
        Colormap of the heatmap.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=100, n_vars=30)
    >>> bf.pp.bin(adata)
    >>> # stands in for bf.tl.predict(adata, model): a perfect prediction
    >>> adata.layers["bioformers_predicted_bins"] = adata.layers["bioformers_binned"].toarray()
    >>> ax = bf.pl.predicted_vs_observed(adata, show=False)
    >>> print(ax.get_title())
    exact bin for 100.0% of expressed values
    all values: 100.0%; predicting 0 everywhere: 50.3%
    """
    keys = Keys(key_added)
    observed = _binned(adata, keys)
    if keys.predicted_bins not in adata.layers:
        raise KeyError(
            f"`adata.layers[{keys.predicted_bins!r}]` not found."
            f"{did_you_mean(keys.predicted_bins, adata.layers.keys())} Run `bf.tl.predict(adata, model)` first."
        )
    predicted = adata.layers[keys.predicted_bins]
    if genes is not None:
        index = _gene_index(adata, [genes] if isinstance(genes, str) else genes)
        observed, predicted = observed[:, index], predicted[:, index]
    predicted = predicted.toarray() if sparse.issparse(predicted) else np.asarray(predicted)
    known = (predicted >= 0).all(axis=0)  # genes the model does not know are predicted -1
    if not known.any():
        raise ValueError("The model knows none of these genes (their predicted bins are -1): nothing to compare.")
    observed, predicted = sparse.csr_matrix(observed)[:, known], predicted[:, known]
    confusion = _confusion(observed, predicted.astype(np.int64))

    total, expressed = confusion.sum(), confusion[:, 1:].sum()
    exact, exact_expressed = np.trace(confusion), np.trace(confusion) - confusion[0, 0]
    zeros = confusion[:, 0].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = confusion / confusion.sum(axis=0, keepdims=True)
    n = confusion.shape[0]

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(
        np.ma.masked_invalid(shares), origin="lower", cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="auto"
    )
    ax.plot([-0.5, n - 0.5], [-0.5, n - 0.5], color="white", linestyle="--", linewidth=0.8)
    ax.figure.colorbar(image, ax=ax, label="share of the observed bin")
    ax.grid(False)  # as in `_heatmap`
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("observed bin")
    ax.set_ylabel("predicted bin (most likely)")
    which = "" if genes is None else f"{genes if isinstance(genes, str) else f'{index.size} genes'}: "
    share_expressed = f"{exact_expressed / expressed:.1%}" if expressed else "n/a (none observed)"
    lines = [
        f"{which}exact bin for {share_expressed} of expressed values",
        f"all values: {exact / total:.1%}; predicting 0 everywhere: {zeros / total:.1%}",
    ]
    how = _how_predicted(adata.uns.get(keys.predicted, {}).get("params"))
    if how:
        lines.append(how)
    ax.set_title("\n".join(lines), fontsize=10)
    return _finish(ax, show=show, return_fig=return_fig)


def _how_predicted(params: dict | None) -> str:
    """Whether `bf.tl.predict` hid each value while predicting it, from its record; ``""`` without one."""
    if params is None:
        return ""
    mask_ratio = params.get("mask_ratio")
    if mask_ratio is None:
        return "not masked: decoded from each cell's state, which saw every value"
    return f"masked: each value hidden while predicted (mask_ratio={float(mask_ratio):g})"


def _binned(adata: AnnData, keys: Keys):
    if keys.binned not in adata.layers:
        raise KeyError(
            f"`adata.layers[{keys.binned!r}]` not found.{did_you_mean(keys.binned, adata.layers.keys())} "
            "Run `bf.pp.bin(adata)` first."
        )
    return adata.layers[keys.binned]


def _bin_counts(binned, *, n_tokens: int = 0) -> np.ndarray:
    """Number of values in each bin; the zeros of a sparse matrix are counted, not materialised."""
    if sparse.issparse(binned):
        data = np.asarray(binned.data, dtype=np.int64)
        counts = np.bincount(data, minlength=max(n_tokens, 1))
        counts[0] += binned.shape[0] * binned.shape[1] - data.size
        return counts
    return np.bincount(np.asarray(binned, dtype=np.int64).ravel(), minlength=max(n_tokens, 1))


def _confusion(observed: sparse.csr_matrix, predicted: np.ndarray) -> np.ndarray:
    """Counts ``[predicted bin, observed bin]`` without densifying the observed bins.

    Every value starts as observed 0; the stored nonzeros are then moved to their own column.
    """
    coo = observed.tocoo()
    stored = coo.data != 0
    rows, cols, data = coo.row[stored], coo.col[stored], coo.data[stored].astype(np.int64)
    n = int(max(predicted.max(initial=0), data.max(initial=0))) + 1
    confusion = np.zeros((n, n), dtype=np.int64)
    confusion[:, 0] = np.bincount(predicted.ravel(), minlength=n)
    moved = predicted[rows, cols]
    confusion[:, 0] -= np.bincount(moved, minlength=n)
    np.add.at(confusion, (moved, data), 1)
    return confusion


def _binning_description(params: dict) -> str:
    method = params.get("method")
    if method == "segment":
        return f"segment binning ({params.get('n_bins')} bins per cell)"
    if method == "value":
        details = [f"exact up to {params.get('cutoff', 8):g}", f"{params.get('bins_per_octave', 3)} bins/octave above"]
        if "n_bins" in params:
            details.append(f"capped at {params['n_bins']}")
        return f"value binning ({', '.join(details)})"
    if method == "rank":
        return f"rank tokens (top {params.get('n_ranks')} genes of each cell ranked, the rest 1)"
    return "binning"
