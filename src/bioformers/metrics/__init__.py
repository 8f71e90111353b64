"""Metrics: embedding quality (AvgBIO), batch integration (scIB), masked prediction, GRNs, perturbation response."""

from ._bio import avg_bio
from ._generation import generation_baselines, generation_scores
from ._grn import correlation_grn, grn_edges, score_grn
from ._integration import batch_asw, graph_connectivity, ilisi, integration_scores
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
from ._perturbation import mean_collapse, mean_profiles, perturbation_scores, top_de_genes
from ._perturbation_baselines import perturbation_baselines

__all__ = [
    "LinearBaseline",
    "avg_bio",
    "balanced_mask",
    "batch_asw",
    "bin_confusion",
    "compare_masked_prediction",
    "correlation_grn",
    "generation_baselines",
    "generation_scores",
    "graph_connectivity",
    "grn_edges",
    "hel_sensitivity",
    "ilisi",
    "integration_scores",
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
