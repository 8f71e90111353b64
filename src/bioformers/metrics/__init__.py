"""Metrics: embedding quality (AvgBIO), masked expression prediction, GRN scoring, perturbation response."""

from ._bio import avg_bio
from ._grn import correlation_grn, grn_edges, score_grn
from ._masked import (
    LinearBaseline,
    balanced_mask,
    bin_confusion,
    compare_masked_prediction,
    hel_sensitivity,
    masked_prediction_scores,
    npv,
    sensitivity,
)
from ._perturbation import mean_collapse, mean_profiles, perturbation_baselines, perturbation_scores, top_de_genes

__all__ = [
    "LinearBaseline",
    "avg_bio",
    "balanced_mask",
    "bin_confusion",
    "compare_masked_prediction",
    "correlation_grn",
    "grn_edges",
    "hel_sensitivity",
    "masked_prediction_scores",
    "mean_collapse",
    "mean_profiles",
    "npv",
    "perturbation_baselines",
    "perturbation_scores",
    "score_grn",
    "sensitivity",
    "top_de_genes",
]
