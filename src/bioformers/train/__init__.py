"""Training plan, precision choice, checkpoints and the guards around training."""

from ._checkpoint import CHECKPOINT_JSON, CHECKPOINT_TENSORS, SafeCheckpointIO, find_checkpoint, read_checkpoint
from ._guard import NonFiniteLossError, TrainingSession
from ._plan import BioFormerTrainingPlan, PerturbationTrainingPlan, default_precision

__all__ = [
    "CHECKPOINT_JSON",
    "CHECKPOINT_TENSORS",
    "BioFormerTrainingPlan",
    "NonFiniteLossError",
    "PerturbationTrainingPlan",
    "SafeCheckpointIO",
    "TrainingSession",
    "default_precision",
    "find_checkpoint",
    "read_checkpoint",
]
