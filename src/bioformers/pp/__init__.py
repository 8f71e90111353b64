"""Preprocessing: value binning and rank tokens."""

from ._binning import bin
from ._rank import rank

__all__ = ["bin", "rank"]
