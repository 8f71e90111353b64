"""The user-facing scvi-tools models."""

from ._bioformer import BioFormer
from ._diffusion import CellDiffusion

__all__ = ["BioFormer", "CellDiffusion"]
