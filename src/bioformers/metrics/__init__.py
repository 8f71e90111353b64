"""Metrics of embedding quality."""

from ._bio import avg_bio

__all__ = ["avg_bio"]
