"""Every way of weighting the per-task losses, behind one interface and one factory.

* :mod:`.base` -- :class:`Weighting`, the interface the learner drives;
* :mod:`.registry` -- :func:`make_weighting`, :func:`weighting_names`, :data:`DEFAULT_OPTIONS`;
* :mod:`.combiners` -- AuxiLearn's learned combiners (linear, nonlinear, convolutional);
* :mod:`.label_generation` -- the auxiliary-label generator and the weightings that learn it;
* :mod:`.alignment` -- loss weights learned by gradient alignment;
* :mod:`.baselines` -- the published baselines, by kind: :mod:`~.baselines.loss` (weights on
  the losses) and :mod:`~.baselines.gradient` (surgery on per-task gradients);
* :mod:`.parts` -- the checks and loss scales they share.

Example:
    >>> w = make_weighting("linear", n_tasks=3)
    >>> type(w).__name__, w.learnable
    ('LinearCombiner', True)
"""
from .alignment import GradientAlignment
from .base import Weighting, check_loss_matrix, default_task_names
from .baselines import (BASELINES, DynamicWeightAverage, EqualWeights, FixedWeights, GradientCosineSimilarity, GradNorm,
                        PCGrad, SingleTask, UncertaintyWeighting)
from .combiners import ConvCombiner, LinearCombiner, NonlinearCombiner
from .label_generation import (GENERATED, GENERATOR_SETTINGS, GENERATOR_WEIGHTINGS, TASK_SETTINGS, AuxiliaryLabelGenerator,
                               FrozenGeneratedLabels, GeneratedLabels, MaxlGeneratedLabels, generator_options,
                               resolved_overrides, soft_label_loss)
from .registry import DEFAULT_OPTIONS, LEARNED, WEIGHTINGS, make_weighting, weighting_names

__all__ = [
    "Weighting", "default_task_names", "check_loss_matrix",
    "make_weighting", "weighting_names", "DEFAULT_OPTIONS", "LEARNED", "WEIGHTINGS", "BASELINES",
    "LinearCombiner", "NonlinearCombiner", "ConvCombiner",
    "AuxiliaryLabelGenerator", "soft_label_loss", "GeneratedLabels", "MaxlGeneratedLabels", "FrozenGeneratedLabels",
    "GENERATOR_WEIGHTINGS", "GENERATOR_SETTINGS", "TASK_SETTINGS", "GENERATED", "generator_options", "resolved_overrides",
    "GradientAlignment",
    "SingleTask", "EqualWeights", "UncertaintyWeighting", "DynamicWeightAverage", "GradNorm",
    "GradientCosineSimilarity", "PCGrad", "FixedWeights",
]
