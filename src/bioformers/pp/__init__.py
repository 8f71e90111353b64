"""Preprocessing: value binning."""

from ._binning import bin

__all__ = ["bin"]
