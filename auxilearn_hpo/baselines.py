"""The published baselines; they live in :mod:`auxilearn_hpo.weightings.baselines`."""
from .weightings.baselines import (BASELINES, DynamicWeightAverage, EqualWeights, FixedWeights,
                                   GradientCosineSimilarity, GradNorm, PCGrad, SingleTask, UncertaintyWeighting)

__all__ = ["SingleTask", "EqualWeights", "UncertaintyWeighting", "DynamicWeightAverage", "GradNorm",
           "GradientCosineSimilarity", "PCGrad", "FixedWeights", "BASELINES"]
