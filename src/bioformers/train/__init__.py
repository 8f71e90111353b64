"""Training plan and precision choice."""

from ._plan import BioFormerTrainingPlan, PerturbationTrainingPlan, default_precision

__all__ = ["BioFormerTrainingPlan", "PerturbationTrainingPlan", "default_precision"]
