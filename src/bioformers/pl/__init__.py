"""Plots that read what `bf.tl` wrote."""

from ._embedding import embedding
from ._genes import attention, binning, gene_programs, grn, predicted_vs_observed
from ._history import history

__all__ = ["attention", "binning", "embedding", "gene_programs", "grn", "history", "predicted_vs_observed"]
