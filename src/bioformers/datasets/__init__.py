"""Bundled real data and seeded synthetic data."""

from ._pbmc3k import pbmc3k
from ._synthetic import synthetic, synthetic_perturbation
from ._trrust import trrust

__all__ = ["pbmc3k", "synthetic", "synthetic_perturbation", "trrust"]
