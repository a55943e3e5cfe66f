"""The weighting interface; it lives in :mod:`auxilearn_hpo.weightings.base`."""
from .weightings.base import check_loss_matrix, default_task_names, Weighting

__all__ = ["Weighting", "default_task_names", "check_loss_matrix"]
