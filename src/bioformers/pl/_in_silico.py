"""In-silico perturbation: embedding shift and movement toward a target per gene, against random genes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import matplotlib.pyplot as plt
import numpy as np

from .._docs import DOC_RETURNS_AX, DOC_SHOW_AX_SIZED, doc_key_added_read, doc_params
from .._keys import Keys
from .._validation import did_you_mean, shown
from ._utils import _finish, _legend_outside

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_TOOL = "`bf.tl.in_silico_perturb(adata, model, genes)`"
_KINDS = ("shift", "toward", "cells")
_BAR_COLOR = "tab:blue"
_BAND_COLOR = "0.85"
#: The random genes' band spans these percentiles of their per-gene values.
_BAND = (5, 95)


@doc_params(
    show_ax=DOC_SHOW_AX_SIZED, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.tl.in_silico_perturb`")
)
def in_silico(
    adata: AnnData,
    genes: str | Sequence[str] | None = None,
    *,
    kind: Literal["shift", "toward", "cells"] = "shift",
    key_added: str = "bioformers",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Effect of each in-silico perturbed gene, from `bf.tl.in_silico_perturb`, next to random genes.

    ``kind="shift"``: a bar per gene, its mean embedding shift (``1 - cos``) over the perturbed
    cells. ``kind="toward"`` (a call with ``target``): a bar per gene, the fraction of perturbed
    cells that move toward the target, labelled with the mean change in cosine similarity.
    ``kind="cells"``: the distribution of the shift over the perturbed cells, a violin per gene.
    The grey band spans the 5th to 95th percentile of the same value over the random genes of the
    call (``n_random``), the dashed line their mean: a gene outside the band moves cells more (or
    less) than genes of similar expression frequency.

    Parameters
    ----------
    adata
        Annotated data with the results of `bf.tl.in_silico_perturb`.
    genes
        Genes to show, in this order (one name or a list); `None`: every perturbed gene, strongest first.
    kind
        ``"shift"``, ``"toward"`` or ``"cells"``.
    {key_added}
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.in_silico_perturb(
    ...     adata, model, ["gene_1", "gene_2"], mode="overexpress", groupby="cell_type", target="type_1", n_random=5
    ... )
    >>> ax = bf.pl.in_silico(adata, kind="toward", show=False)
    >>> ax.get_xlabel()
    'fraction of cells moving toward type_1'
    """
    keys = Keys(key_added)
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {shown(_KINDS)}, not {kind!r}.{did_you_mean(kind, _KINDS)}")
    if keys.in_silico not in adata.uns or keys.in_silico_shift not in adata.obsm:
        raise KeyError(
            f"`adata.uns[{keys.in_silico!r}]` or `adata.obsm[{keys.in_silico_shift!r}]` not found."
            f"{did_you_mean(keys.in_silico, adata.uns.keys())} Run {_TOOL} first."
        )
    record = adata.uns[keys.in_silico]
    table, params = record["genes"], record["params"]
    random = record.get("random")
    target = params.get("target")
    if kind == "toward" and (target is None or "mean_toward" not in table.columns):
        raise ValueError(
            "`kind='toward'` needs a target state, and this call had none. Run "
            "`bf.tl.in_silico_perturb(adata, model, genes, groupby=..., target=...)` first, or plot `kind='shift'`."
        )
    names = _genes(table, genes)
    table = table.loc[names]
    n = len(names)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, max(2.5, 1.4 + 0.35 * n)))
    position = np.arange(n)
    column = "fraction_toward" if kind == "toward" else "mean_shift"
    if random is not None and len(random):
        _random_band(ax, random[column].to_numpy(dtype=np.float64), kind=kind)

    if kind == "cells":
        shift = adata.obsm[keys.in_silico_shift]
        values = [shift[name].dropna().to_numpy(dtype=np.float64) for name in names]
        shown_at = [i for i, v in enumerate(values) if v.size]
        if shown_at:
            parts = ax.violinplot(
                [values[i] for i in shown_at], positions=position[shown_at], vert=False, showmedians=True, widths=0.8
            )
            for body in parts["bodies"]:
                body.set_facecolor(_BAR_COLOR)
                body.set_alpha(0.6)
        xlabel = "embedding shift per cell (1 - cos)"
    else:
        ax.barh(position, table[column].to_numpy(dtype=np.float64), height=0.6, color=_BAR_COLOR, zorder=2)
        if kind == "toward":
            ax.set_xlim(0, 1.3)  # room for the labels right of the bars
            ax.set_xticks(np.linspace(0, 1, 5))
            ax.axvline(0.5, color="black", linewidth=0.8)
            for i, change in enumerate(table["mean_toward"].to_numpy(dtype=np.float64)):
                x = table[column].iloc[i]
                ax.text(
                    (x if np.isfinite(x) else 0) + 0.01, i, f"Δcos {change:+.3f}", va="center", fontsize=8, zorder=3
                )
            xlabel = f"fraction of cells moving toward {target}"
        else:
            xlabel = "mean embedding shift (1 - cos)"
    for i, count in enumerate(table["n_cells"].to_numpy()):
        if count == 0:
            ax.text(0, i, " no cell perturbed", va="center", color="0.4", fontsize=8)
    ax.set_yticks(position, [f"{name} ({count})" for name, count in zip(names, table["n_cells"], strict=True)])
    ax.set_ylim(n - 0.5, -0.5)  # the first gene on top
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gene (cells perturbed)")
    groups = params.get("groups")
    cells = f"in {', '.join(map(str, groups))}" if groups is not None and len(groups) else f"{params['n_cells']} cells"
    ax.set_title(f"in-silico {params['mode']}, {cells}" + (f", target {target}" if target is not None else ""))
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        # outside the axes: bars reach either side, and the band can span the whole width
        _legend_outside(ax, handles)
    return _finish(ax, show=show, return_fig=return_fig)


def _genes(table: pd.DataFrame, genes: str | Sequence[str] | None) -> list[str]:
    """The genes to show: all of the table's, in its order, or the requested ones, which must be in it."""
    if genes is None:
        return table.index.tolist()
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [gene for gene in genes if gene not in table.index]
    if missing:
        raise KeyError(
            f"Gene(s) {shown(missing, 5)} were not perturbed by the last `bf.tl.in_silico_perturb` call (it perturbed "
            f"{shown(table.index, 5)}).{did_you_mean(missing[0], table.index)} Pass some of those, or run it with them."
        )
    return genes


def _random_band(ax: Axes, values: np.ndarray, *, kind: str) -> None:
    """Grey band over the random genes' 5th-95th percentile of ``values``, dashed line at their mean."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    low, high = np.percentile(values, _BAND)
    what = "fraction toward" if kind == "toward" else "mean shift"
    label = f"{values.size} random genes,\n{what}: {_BAND[0]}th-{_BAND[1]}th pct."
    ax.axvspan(low, high, color=_BAND_COLOR, zorder=0, label=label)
    ax.axvline(values.mean(), color="0.4", linestyle="--", linewidth=1, zorder=1, label="average of the random genes")
