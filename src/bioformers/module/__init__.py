"""The torch networks (scvi-tools ``BaseModuleClass``) and their losses."""

from ._bioformer import BioFormerModule, check_module_arguments
from ._decoder import BioFormerDecoderModule

__all__ = ["BioFormerDecoderModule", "BioFormerModule", "check_module_arguments"]
