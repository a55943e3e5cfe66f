"""Learned auxiliary labels; they live in :mod:`auxilearn_hpo.weightings.label_generation`."""
from .weightings.label_generation import (FrozenGeneratedLabels, GENERATED, GeneratedLabels, generator_options,
                                          GENERATOR_SETTINGS, GENERATOR_WEIGHTINGS, MaxlGeneratedLabels,
                                          resolved_overrides, TASK_SETTINGS)

__all__ = ["GeneratedLabels", "FrozenGeneratedLabels", "MaxlGeneratedLabels", "GENERATOR_WEIGHTINGS",
           "GENERATOR_SETTINGS", "GENERATED", "generator_options", "resolved_overrides", "TASK_SETTINGS"]
