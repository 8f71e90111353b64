"""What the `bf.pl` functions share: how a plot is returned, and genes looked up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import scanpy as sc

from .._validation import shown

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from anndata import AnnData
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _finish(axes: Axes | list[Axes], *, show: bool | None, return_fig: bool) -> Axes | list[Axes] | Figure | None:
    """Return what a `bf.pl` function returns, following Scanpy's `show` / `return_fig` conventions."""
    if return_fig:
        return (axes[0] if isinstance(axes, list) else axes).figure
    if show is None:
        show = sc.settings.autoshow and matplotlib.is_interactive()
    if show:
        plt.show()
        return None
    return axes


def _legend_outside(ax: Axes, handles: Sequence[Artist], *, title: str | None = None) -> None:
    """A legend right of the axes, aligned with their top: one column, two past 16 entries."""
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=8,
        ncols=1 if len(handles) <= 16 else 2,
    )


def _gene_index(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Positions of `genes` in `adata.var_names`, or a KeyError naming the unknown ones."""
    genes = list(genes)
    missing = [gene for gene in genes if gene not in adata.var_names]
    if missing:
        raise KeyError(
            f"Genes not found: {shown(missing, 5)}. Check `adata.var_names` "
            f"(e.g. {', '.join(adata.var_names[:3])}, ...)."
        )
    return adata.var_names.get_indexer(genes)
