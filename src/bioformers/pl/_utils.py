"""What every `bf.pl` function shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import scanpy as sc

if TYPE_CHECKING:
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
