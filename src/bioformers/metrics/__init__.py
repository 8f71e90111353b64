"""Metrics: embedding quality (AvgBIO), masked expression prediction, GRN scoring."""

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
    "npv",
    "score_grn",
    "sensitivity",
]
