"""The torch network (scvi-tools ``BaseModuleClass``) and its losses."""

from ._bioformer import BioFormerModule

__all__ = ["BioFormerModule"]
