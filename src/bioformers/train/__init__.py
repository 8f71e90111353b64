"""Training plan and precision choice."""

from ._plan import BioFormerTrainingPlan, default_precision

__all__ = ["BioFormerTrainingPlan", "default_precision"]
