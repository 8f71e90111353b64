"""Plots that read what `bf.tl` wrote."""

from ._embedding import embedding
from ._history import history

__all__ = ["embedding", "history"]
