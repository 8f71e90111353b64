"""bioformers: transformers for single-cell expression that train on your own AnnData."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, metrics, pl, pp, tl
from .model import BioFormer

try:
    __version__ = version("bioformers")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["BioFormer", "__version__", "datasets", "metrics", "pl", "pp", "tl"]
