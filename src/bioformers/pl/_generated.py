"""Generated cells against real ones: a joint UMAP, and the per-gene means of both sides."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.lines import Line2D
from scipy import sparse

from .._docs import DOC_SHOW, doc_params
from .._validation import check_anndata, did_you_mean, matrix_name, shown
from ..metrics._checks import _check_int
from ..metrics._generation import _group_labels, _moments, _values
from ..metrics._perturbation import _pearson
from ._utils import _finish, _legend_outside

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SOURCES = ("real", "generated")
# apart from the first colours of Scanpy's group palette, which the group panels use
_SOURCE_COLORS = {"real": "0.3", "generated": "#c51b8a"}
_BACKGROUND = "0.88"  # cells of the other side, under the coloured ones
#: A PCA with at least 2 components needs 3 genes.
_MIN_GENES = 3
#: The fewest cells, both sides together, a neighbour graph and UMAP are computed from.
_MIN_CELLS = 5
_TARGET_SUM = 1e4


@doc_params(show=DOC_SHOW)
def generated_vs_real(
    real: ad.AnnData,
    generated: ad.AnnData,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    genes: str | Sequence[str] | None = None,
    normalize: bool = False,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    max_cells: int | None = 2000,
    seed: int = 0,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Generated cells next to real cells: a joint UMAP, and the mean of each gene on both sides.

    Real and generated cells (e.g. from `bf.tl.generate`) are compared on the genes they share,
    matched by name (in any order), and on a common scale: both log-normalised
    (``sc.pp.normalize_total(adata, target_sum=1e4)`` then ``sc.pp.log1p(adata)``), or both the
    same kind of values in `layer`; with ``normalize=True`` both hold counts and are
    log-normalised here. Neither AnnData is modified: the UMAP is computed with Scanpy
    (:func:`~scanpy.pp.pca`, :func:`~scanpy.pp.neighbors`, :func:`~scanpy.tl.umap`) on a private
    AnnData of the pooled cells.

    Panels:

    * **UMAP by source**: real and generated cells on one UMAP, drawn in random order so that
      neither side hides the other. Generated cells that mix with the real ones look real on
      the top principal components; a separate island does not.
    * **Mean per gene**: the mean of each gene over all real cells (x) against its mean over all
      generated cells (y), the diagonal, and the Pearson correlation ``r`` in the title (the
      ``pearson_mean`` of `bf.metrics.generation_scores`). With `groupby`, one point per gene and
      group, coloured by group, and each group's ``r`` in the legend; only groups with both real
      and generated cells are drawn here.
    * With `groupby`, **UMAP of the real cells by group** and **UMAP of the generated cells by
      group**, on the same coordinates, the other side in grey underneath: a generated group
      should land where the real cells of that group are. Every group is drawn, those of one
      side only too (marked in the legend).

    Parameters
    ----------
    real
        Real cells.
    generated
        Generated cells on the same scale as `real`, sharing at least 3 genes with it.
    groupby
        Column of ``obs`` in both AnnData with the group of each cell (e.g. ``"cell_type"``,
        the column `bf.tl.generate` writes its condition under); `None`: no groups. Only
        groups present on both sides are compared in the mean panel; there must be at least
        one.
    layer
        Layer of both AnnData with the values; `None`: ``X``.
    genes
        Genes to compare (a name or a list; each in both AnnData); `None`: every shared gene.
        The UMAP is computed from these genes too, e.g. pass highly variable genes.
    normalize
        Log-normalise both sides here, each cell to ``1e4`` over the compared genes then
        ``log1p``, as Scanpy does (`real` and `generated` must then hold counts, e.g. raw counts
        and the `X` a decoder-only BioFormer's `bf.tl.generate` returns; a `CellDiffusion`'s is
        already ``log1p`` CP10k, to compare with log-normalised real cells). Normalising over the
        same genes on both sides keeps the scales comparable when one side has genes the other lacks.
    n_pcs
        Principal components the neighbour graph is built on (fewer if there are fewer genes or
        cells).
    n_neighbors
        Neighbours of the graph the UMAP is computed from (fewer if there are fewer cells).
    max_cells
        Cells drawn at random (without replacement, seeded) from each side for the UMAP, to
        keep it fast; `None`: every cell. The means always use every cell.
    seed
        Seed of the cells drawn, the PCA, the neighbour graph, the UMAP and the drawing order.
    {show}

    Returns
    -------
    list of :class:`~matplotlib.axes.Axes`, :class:`~matplotlib.figure.Figure` or None
        A list of Axes, the Figure if `return_fig`, or None if shown. The list is ``[UMAP by source,
        mean per gene]``, and with `groupby` ``[UMAP by source, mean per gene, UMAP of the real cells
        by group, UMAP of the generated cells by group]``. The plot draws a figure of its own (it has
        several panels, so there is no `ax`).

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> real, train = adata[::2].copy(), adata[1::2].copy()
    >>> # stands in for bf.tl.generate(model, {"cell_type": ["type_0", "type_1"]}, n_per_condition=50):
    >>> baselines = bf.metrics.generation_baselines(train, groupby="cell_type", methods="independent_genes")
    >>> generated = baselines["independent_genes"]
    >>> axes = bf.pl.generated_vs_real(real, generated, groupby="cell_type", normalize=True, show=False)
    >>> len(axes)
    4
    """
    check_anndata(real, name="real", writes=False)
    check_anndata(generated, name="generated", writes=False)
    _check_int(n_pcs, "n_pcs", 1)
    _check_int(n_neighbors, "n_neighbors", 2)
    if max_cells is not None:
        _check_int(max_cells, "max_cells", 2)
    _check_int(seed, "seed", 0)
    matrices = {"real": _values(real, layer, "real"), "generated": _values(generated, layer, "generated")}
    if normalize:
        for side, X in matrices.items():
            _check_non_negative(X, matrix_name(layer, name=side))
    names, columns = _compared_genes(real.var_names, generated.var_names, genes)
    labels, groups, shared = {}, {}, []
    if groupby is not None:
        labels["real"], groups["real"] = _group_labels(real, groupby, "real")
        labels["generated"], groups["generated"] = _group_labels(generated, groupby, "generated")
        shared = [group for group in groups["real"] if group in groups["generated"]]
        if not shared:
            raise ValueError(
                f"No group of `obs[{groupby!r}]` has both real and generated cells: real cells are of "
                f"{shown(groups['real'])}, generated cells of {shown(groups['generated'])}. Generate cells of the "
                "real groups, or check that `groupby` names the column the generated cells are labelled in."
            )
    n_cells = {side: X.shape[0] for side, X in matrices.items()}
    rows = {side: _sample(n, max_cells, [seed, i]) for i, (side, n) in enumerate(n_cells.items())}
    if sum(r.size for r in rows.values()) < _MIN_CELLS:
        raise ValueError(
            f"{n_cells['real']} real and {n_cells['generated']} generated cells are too few for a UMAP; it needs at "
            f"least {_MIN_CELLS} cells in all. Pass more cells."
        )

    values = {side: _compared_values(X, columns[side], normalize=normalize) for side, X in matrices.items()}
    umap = _joint_umap(values, rows, n_pcs=n_pcs, n_neighbors=n_neighbors, seed=seed)
    pooled_groups = list(dict.fromkeys([*groups.get("real", []), *groups.get("generated", [])]))
    colors = dict(zip(pooled_groups, _palette(len(pooled_groups)), strict=True))

    if groupby is None:
        _, grid = plt.subplots(1, 2, figsize=(10.5, 4.6), layout="constrained")
        axes = list(grid)
    else:
        _, grid = plt.subplots(2, 2, figsize=(11.5, 9.2), layout="constrained")
        axes = [grid[0, 0], grid[0, 1], grid[1, 0], grid[1, 1]]
    draw_order = np.random.default_rng([seed, 2]).permutation(umap.shape[0])
    source = np.repeat(_SOURCES, [rows[side].size for side in _SOURCES])
    _scatter_umap(axes[0], umap[draw_order], [_SOURCE_COLORS[s] for s in source[draw_order]])
    handles = [_marker(_SOURCE_COLORS[side], _cells_label(side, rows[side].size, n_cells[side])) for side in _SOURCES]
    axes[0].legend(handles=handles, loc="best", frameon=False, fontsize=8)
    axes[0].set_title("real and generated cells")

    if groupby is None:
        _mean_panel_all(axes[1], values, names)
    else:
        _mean_panel_groups(axes[1], values, labels, shared, colors, names, groupby, seed)
        for ax, side in zip(axes[2:], _SOURCES, strict=True):
            other = source != side
            _scatter_umap(ax, umap[other], _BACKGROUND)
            cell_groups = labels[side][rows[side]]
            order = np.random.default_rng([seed, 3]).permutation(cell_groups.size)
            _scatter_umap(ax, umap[~other][order], [colors[g] for g in cell_groups[order]])
            ax.set_title(f"{side} cells by {groupby}")
        only = {g: "real only" for g in groups["real"] if g not in shared}
        only |= {g: "generated only" for g in groups["generated"] if g not in shared}
        handles = [_marker(colors[g], f"{g} ({only[g]})" if g in only else g) for g in pooled_groups]
        _legend_outside(axes[3], handles, title=groupby)
    return _finish(axes, show=show, return_fig=return_fig)


def _check_non_negative(X, where: str) -> None:
    values = X.data if sparse.issparse(X) else X
    if values.size and values.min() < 0:
        raise ValueError(
            f"`normalize=True` log-normalises counts, but `{where}` has negative values (it looks scaled). Pass "
            "`layer=` naming the counts, or log-normalise both sides yourself and pass `normalize=False`."
        )


def _compared_genes(
    real_genes: pd.Index, generated_genes: pd.Index, genes: str | Sequence[str] | None
) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """The genes to compare (in `real`'s order, or the order of `genes`) and their column on each side."""
    shared = real_genes.intersection(generated_genes, sort=False)
    if genes is None:
        if len(shared) < _MIN_GENES:
            raise ValueError(
                f"`real` and `generated` share {len(shared)} gene(s) ({shown(shared)}); the comparison needs at least "
                f"{_MIN_GENES}. Genes are matched by `var_names`: check that both use the same gene identifiers "
                f"(e.g. `real.var_names[:3]` = {shown(real_genes[:3])}, `generated.var_names[:3]` = "
                f"{shown(generated_genes[:3])}), and that the generated cells come from a model trained on these genes."
            )
        names = shared
    else:
        names = pd.Index(list(dict.fromkeys([genes] if isinstance(genes, str) else list(genes))))
        for side, known in (("real", real_genes), ("generated", generated_genes)):
            missing = names.difference(known, sort=False)
            if len(missing):
                raise KeyError(
                    f"`genes` {shown(missing, 5)} not in `{side}.var_names`.{did_you_mean(missing[0], known)} "
                    f"Pass genes that both AnnData have ({len(shared)} shared)."
                )
        if len(names) < _MIN_GENES:
            raise ValueError(f"`genes` lists {len(names)} gene(s); the comparison needs at least {_MIN_GENES}.")
    return names, {"real": real_genes.get_indexer(names), "generated": generated_genes.get_indexer(names)}


def _sample(n: int, max_cells: int | None, seed: list[int]) -> np.ndarray:
    """Rows drawn for the UMAP: all of them, or `max_cells` at random, in their order."""
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def _compared_values(X, columns: np.ndarray, *, normalize: bool):
    """The compared genes' values, log-normalised over them with `normalize`; a sparse matrix stays sparse."""
    if not normalize:
        return X if np.array_equal(columns, np.arange(X.shape[1])) else X[:, columns]
    # indexing and `astype` copy, so Scanpy's in-place normalisation never reaches the caller's matrix
    work = ad.AnnData(X=X[:, columns].astype(np.result_type(X.dtype, np.float32)))
    sc.pp.normalize_total(work, target_sum=_TARGET_SUM)
    sc.pp.log1p(work)
    return work.X


def _joint_umap(values: dict, rows: dict, *, n_pcs: int, n_neighbors: int, seed: int) -> np.ndarray:
    """UMAP coordinates of the drawn real cells, then the drawn generated cells, from a PCA of both."""
    blocks = [values[side][rows[side]] for side in _SOURCES]
    if any(sparse.issparse(block) for block in blocks):
        pooled = sparse.vstack([sparse.csr_matrix(block) for block in blocks], format="csr")
    else:
        pooled = np.vstack(blocks)
    work = ad.AnnData(X=pooled.astype(np.result_type(pooled.dtype, np.float32)))
    n_comps = min(n_pcs, min(work.shape) - 1)
    sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(work, n_neighbors=min(n_neighbors, work.n_obs - 1), use_rep="X_pca", random_state=seed)
    sc.tl.umap(work, random_state=seed)
    return work.obsm["X_umap"]


def _group_means(X, labels: np.ndarray, group: str) -> np.ndarray:
    return _moments(X[np.flatnonzero(labels == group)])[0]


def _mean_panel_all(ax: Axes, values: dict, names: pd.Index) -> None:
    mean_real, mean_generated = (_moments(values[side])[0] for side in _SOURCES)
    ax.scatter(mean_real, mean_generated, s=_point_size(len(names)), color="0.25", alpha=0.7, linewidths=0)
    _diagonal(ax, [mean_real, mean_generated])
    ax.set_title(f"mean per gene ({len(names)} genes): r = {_format_r(_pearson(mean_real, mean_generated))}")


def _mean_panel_groups(
    ax: Axes, values: dict, labels: dict, shared: list[str], colors: dict, names: pd.Index, groupby: str, seed: int
) -> None:
    means = {group: [_group_means(values[side], labels[side], group) for side in _SOURCES] for group in shared}
    x, y = (np.concatenate([means[group][i] for group in shared]) for i in range(2))
    point_colors = np.repeat([colors[group] for group in shared], len(names))
    # one scatter in random order, so that no group is drawn over all the others
    order = np.random.default_rng([seed, 4]).permutation(x.size)
    size = _point_size(x.size)
    ax.scatter(x[order], y[order], s=size, c=point_colors[order], alpha=0.7, linewidths=0)
    _diagonal(ax, [x, y])
    ax.set_title(f"mean per gene and {groupby} ({len(names)} genes)")
    handles = [_marker(colors[group], f"{group}: r = {_format_r(_pearson(*means[group]))}") for group in shared]
    _legend_outside(ax, handles, title=f"{groupby} (in both)")


def _diagonal(ax: Axes, means: list[np.ndarray]) -> None:
    """The line y = x over the range of the means, the same on both axes."""
    finite = np.concatenate([m[np.isfinite(m)] for m in means])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.05 * (high - low) or 0.5
    limits = (low - pad, high + pad)
    ax.plot(limits, limits, color="0.5", linestyle="--", linewidth=1, zorder=0)
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("mean in real cells")
    ax.set_ylabel("mean in generated cells")


def _scatter_umap(ax: Axes, coordinates: np.ndarray, color) -> None:
    ax.scatter(
        coordinates[:, 0], coordinates[:, 1], s=_point_size(coordinates.shape[0]), c=color, linewidths=0, alpha=0.8
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")


def _point_size(n: int) -> float:
    """Marker area: smaller for more points, as in Scanpy (``120000 / n``), within readable bounds."""
    return float(np.clip(30000 / max(n, 1), 2.0, 40.0))


def _marker(color, label: str) -> Line2D:
    return Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=color, markeredgewidth=0, label=label)


def _cells_label(side: str, drawn: int, total: int) -> str:
    return f"{side} ({total} cells)" if drawn == total else f"{side} ({drawn} of {total} cells)"


def _format_r(r: float) -> str:
    return f"{r:.3f}" if np.isfinite(r) else "n/a (a constant side)"


def _palette(n: int) -> list:
    """Scanpy's default categorical colours for `n` groups."""
    palettes = sc.pl.palettes
    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return list(palette[:n])
    return [palettes.default_102[i % len(palettes.default_102)] for i in range(n)]
