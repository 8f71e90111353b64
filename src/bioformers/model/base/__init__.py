"""What the bioformers models share, one group of methods per file, composed by each model class.

As scvi-tools composes ``SCVI`` from the mixins of ``scvi.model.base``: a model class lists the mixins
of what it can do and adds only its network and its arguments.
"""

from ._conditions import ConditionsMixin
from ._generation import GenerationMixin
from ._perturbation import PerturbationMixin
from ._predictions import MaskedPredictionMixin
from ._query import Query, QueryMixin
from ._save_load import SaveLoadMixin
from ._setup import TokenSetupMixin
from ._training import TokenTrainingMixin

__all__ = [
    "ConditionsMixin",
    "GenerationMixin",
    "MaskedPredictionMixin",
    "PerturbationMixin",
    "Query",
    "QueryMixin",
    "SaveLoadMixin",
    "TokenSetupMixin",
    "TokenTrainingMixin",
]
