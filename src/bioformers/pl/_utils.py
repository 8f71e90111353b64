"""What the `bf.pl` functions share: how a plot is returned, and genes looked up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import scanpy as sc

from .._validation import did_you_mean, shown

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
            f"Genes not found: {shown(missing, 5)}.{_suggest(str(missing[0]), adata.var_names)} "
            f"Check `adata.var_names` (e.g. {', '.join(adata.var_names[:3])}, ...)."
        )
    return adata.var_names.get_indexer(genes)


def _suggest(gene: str, names: Sequence[str]) -> str:
    """`` Did you mean ...?`` for a gene name: the same name in another case, the names it begins, or a close one.

    A family prefix (``"CD3"``) is answered with its members (``'CD3D', 'CD3E'``) rather than the
    single closest spelling, which would be an arbitrary one of them.
    """
    names = [str(name) for name in names]
    lower = gene.lower()
    same = [name for name in names if name.lower() == lower]
    if same:
        return f" Did you mean {same[0]!r}?"
    starting = sorted(name for name in names if name.lower().startswith(lower)) if lower else []
    if len(starting) == 1:
        return f" Did you mean {starting[0]!r}?"
    if starting:
        return f" Did you mean one of {shown(starting, 5)}?"
    return did_you_mean(gene, names)
