"""The torch networks (scvi-tools ``BaseModuleClass``) and their losses."""

from ._bioformer import BioFormerModule, check_module_arguments
from ._decoder import BioFormerDecoderModule
from ._diffusion import CellDiffusionModule
from ._objectives import fit_count_decoder, redundancy_reduction
from ._perturbation import BioFormerPerturbationModule

__all__ = [
    "BioFormerDecoderModule",
    "BioFormerModule",
    "BioFormerPerturbationModule",
    "CellDiffusionModule",
    "check_module_arguments",
    "fit_count_decoder",
    "redundancy_reduction",
]
