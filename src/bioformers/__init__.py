"""bioformers: transformers for single-cell expression that train on your own AnnData."""

from . import datasets, metrics, pl, pp, tl
from ._record import package_version
from .model import BioFormer, BioFormerDecoder, CellDiffusion

__version__ = package_version()

__all__ = ["BioFormer", "BioFormerDecoder", "CellDiffusion", "__version__", "datasets", "metrics", "pl", "pp", "tl"]
