"""AuxiLearn's learned combiners and the auxiliary-label generator; they live in :mod:`auxilearn_hpo.weightings`."""
from .weightings.combiners import ConvCombiner, LinearCombiner, NonlinearCombiner
from .weightings.label_generation import AuxiliaryLabelGenerator, soft_label_loss

__all__ = ["LinearCombiner", "NonlinearCombiner", "ConvCombiner", "AuxiliaryLabelGenerator", "soft_label_loss"]
