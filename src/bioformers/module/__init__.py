"""The torch networks (scvi-tools ``BaseModuleClass``) and their losses."""

from ._bioformer import BioFormerModule, check_module_arguments
from ._decoder import BioFormerDecoderModule
from ._diffusion import CellDiffusionModule

__all__ = ["BioFormerDecoderModule", "BioFormerModule", "CellDiffusionModule", "check_module_arguments"]
