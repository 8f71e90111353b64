"""The user-facing scvi-tools models."""

from ._bioformer import BioFormer
from ._decoder import BioFormerDecoder
from ._diffusion import CellDiffusion

__all__ = ["BioFormer", "BioFormerDecoder", "CellDiffusion"]
