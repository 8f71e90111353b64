"""Plots that read what `bf.tl` wrote."""

from ._binning import binning, predicted_vs_observed
from ._embedding import embedding
from ._generated import generated_vs_real
from ._grn import attention, gene_programs, grn
from ._history import history
from ._in_silico import in_silico
from ._perturbation import perturbation, perturbation_scores

__all__ = [
    "attention",
    "binning",
    "embedding",
    "gene_programs",
    "generated_vs_real",
    "grn",
    "history",
    "in_silico",
    "perturbation",
    "perturbation_scores",
    "predicted_vs_observed",
]
