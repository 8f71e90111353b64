"""The torch network (scvi-tools ``BaseModuleClass``) and its losses."""

from ._bioformer import BioFormerModule, check_module_arguments

__all__ = ["BioFormerModule", "check_module_arguments"]
