"""The user-facing scvi-tools model."""

from ._bioformer import BioFormer

__all__ = ["BioFormer"]
