"""Bundled real data and seeded synthetic data."""

from ._pbmc3k import pbmc3k
from ._synthetic import synthetic

__all__ = ["pbmc3k", "synthetic"]
