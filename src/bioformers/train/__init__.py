"""Training plan, precision choice, checkpoints and the guards around training."""

from ._checkpoint import CHECKPOINT_JSON, CHECKPOINT_TENSORS, SafeCheckpointIO, find_checkpoint, read_checkpoint
from ._guard import NonFiniteLossError, TrainingSession
from ._plan import PerturbationTrainingPlan, WarmupCosineTrainingPlan, default_precision

__all__ = [
    "CHECKPOINT_JSON",
    "CHECKPOINT_TENSORS",
    "NonFiniteLossError",
    "PerturbationTrainingPlan",
    "SafeCheckpointIO",
    "TrainingSession",
    "WarmupCosineTrainingPlan",
    "default_precision",
    "find_checkpoint",
    "read_checkpoint",
]
