"""Every weighting by name; it lives in :mod:`auxilearn_hpo.weightings.registry`."""
from .weightings.registry import DEFAULT_OPTIONS, LEARNED, make_weighting, weighting_names, WEIGHTINGS

__all__ = ["LEARNED", "DEFAULT_OPTIONS", "WEIGHTINGS", "make_weighting", "weighting_names"]
