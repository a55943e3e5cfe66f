"""Loss weights learned by gradient alignment; it lives in :mod:`auxilearn_hpo.weightings.alignment`."""
from .weightings.alignment import GradientAlignment

__all__ = ["GradientAlignment"]
